/* fastim2col's stand-in for the flot-orderBars plugin, which asv's dashboard
 * loads from a CDN and Debian does not package: series with `bars.order` are
 * drawn side by side instead of on top of each other. Each ordered series
 * gets an equal share of the bar width, shifted by its rank among them.
 * Public domain (CC0); written for tools/asv_publish.sh. */
(function ($) {
    function init(plot) {
        plot.hooks.processDatapoints.push(function (plot, series, datapoints) {
            if (!series.bars || !series.bars.show || series.bars.order == null) {
                return;
            }
            var orders = [];
            $.each(plot.getData(), function (i, s) {
                if (s.bars && s.bars.show && s.bars.order != null &&
                        orders.indexOf(s.bars.order) === -1) {
                    orders.push(s.bars.order);
                }
            });
            if (orders.length < 2) {
                return;
            }
            orders.sort(function (a, b) { return a - b; });
            var width = series.bars.barWidth / orders.length;
            var rank = orders.indexOf(series.bars.order);
            var left = series.bars.align === "center" ? -series.bars.barWidth / 2 : 0;
            var shift = left + rank * width + width / 2;
            var ps = datapoints.pointsize, points = datapoints.points;
            for (var i = 0; i < points.length; i += ps) {
                if (points[i] != null) {
                    points[i] += shift;
                }
            }
            series.bars.barWidth = width;
            series.bars.align = "center";
        });
    }
    $.plot.plugins.push({
        init: init,
        options: { series: { bars: { order: null } } },
        name: "orderBars",
        version: "fastim2col"
    });
})(jQuery);
