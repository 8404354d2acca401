"""python -m fastim2col: the main job (a layer-suite table) and `bench`."""
from ._bench import main

if __name__ == "__main__":
    raise SystemExit(main())
