/* fusebench: what asv's web UI takes from CDNs besides jQuery and flot, written small
   so that the published history site works without a network.

   asv's index.html loads jQuery, flot 0.8.3 and its time / selection / categories
   plugins, flot-orderBars, stupidtable, blueimp-md5 and Bootstrap 3 from CDNs. `asv
   publish` (through the plugin in harness/asv_suite.py) replaces those tags with local
   files: jQuery and flot core from this machine (Debian's libjs-jquery, pympler's copy
   of flot, which asv depends on) and this file, which provides:

   - flot "time" axes (ticks at round seconds/minutes/hours/days, dates as labels) and
     "categories" axes (string x values placed at 0, 1, 2, ...), the two flot plugins
     without which asv's graphs cannot draw. Zooming by selection and bar ordering are
     left out: the graphs draw without them.
   - $.fn.stupidtable / $.fn.stupidsort: click a header to sort the table.
   - md5(): asv keys ignored regressions in localStorage by it; any stable string hash
     serves, and this one is FNV-1a (not MD5).
   - the Bootstrap 3 pieces asv calls: tooltip, popover, modal, dropdown toggles.
*/
(function ($) {
    'use strict';

    /* ---- flot: time axes ----------------------------------------------------------- */
    var SECOND = 1e3, MINUTE = 60 * SECOND, HOUR = 60 * MINUTE, DAY = 24 * HOUR;
    var TIME_STEPS = [SECOND, 10 * SECOND, MINUTE, 10 * MINUTE, HOUR, 6 * HOUR, DAY, 2 * DAY,
                      7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY, 182 * DAY, 365 * DAY];

    function pad(n) { return (n < 10 ? '0' : '') + n; }

    function timeTicks(axis) {
        var span = axis.max - axis.min;
        if (!(span > 0)) { return [axis.min]; }
        var want = span / 6, step = TIME_STEPS[TIME_STEPS.length - 1];
        for (var i = 0; i < TIME_STEPS.length; i++) {
            if (TIME_STEPS[i] >= want) { step = TIME_STEPS[i]; break; }
        }
        while (step < want) { step *= 2; }
        axis.fbTimeStep = step;
        var ticks = [];
        for (var v = Math.ceil(axis.min / step) * step; v <= axis.max; v += step) { ticks.push(v); }
        return ticks.length ? ticks : [axis.min, axis.max];
    }

    function formatTime(v, axis) {
        var d = new Date(v);
        var day = d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate());
        if ((axis.fbTimeStep || DAY) >= DAY) { return day; }
        return day + ' ' + pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes());
    }

    /* ---- flot: category axes ------------------------------------------------------- */
    function categoryTicks(axis) {
        var ticks = [];
        $.each(axis.fbCategories || {}, function (label, index) { ticks.push([index, label]); });
        ticks.sort(function (a, b) { return a[0] - b[0]; });
        return ticks;
    }

    function init(plot) {
        plot.hooks.processOptions.push(function (plot) {
            $.each(plot.getAxes(), function (name, axis) {
                var mode = axis.options.mode;
                if (mode === 'time') {
                    axis.tickGenerator = timeTicks;
                    axis.tickFormatter = formatTime;
                } else if (mode === 'categories') {
                    axis.fbCategories = {};
                    axis.tickGenerator = categoryTicks;
                    axis.tickFormatter = function (v) { return '' + v; };
                }
            });
        });
        plot.hooks.processRawData.push(function (plot, series, data) {
            $.each([['xaxis', 0], ['yaxis', 1]], function (k, which) {
                var axis = series[which[0]];
                if (!axis || axis.options.mode !== 'categories') { return; }
                var seen = axis.fbCategories;
                for (var i = 0; i < data.length; i++) {
                    if (data[i] === null) { continue; }
                    var label = data[i][which[1]];
                    if (typeof label === 'number') { continue; }
                    if (!(label in seen)) { seen[label] = Object.keys(seen).length; }
                    data[i][which[1]] = seen[label];
                }
                axis.options.ticks = categoryTicks(axis);
                axis.options.min = axis.options.min === undefined || axis.options.min === null ? -0.5 : axis.options.min;
                axis.options.max = Math.max(Object.keys(seen).length - 0.5, 0.5);
            });
        });
    }

    if ($.plot && $.plot.plugins) {
        $.plot.plugins.push({init: init, options: {}, name: 'fusebench-offline', version: '1'});
    }

    /* ---- sortable tables (the calls asv makes to stupidtable) ---------------------- */
    function num(x, parse) { var v = parse(x); return isNaN(v) ? Infinity : v; }
    var SORTS = {
        'int': function (a, b) { return num(a, function (x) { return parseInt(x, 10); }) - num(b, function (x) { return parseInt(x, 10); }); },
        'float': function (a, b) { return num(a, parseFloat) - num(b, parseFloat); },
        'string': function (a, b) { return String(a).localeCompare(String(b)); },
        'string-ins': function (a, b) { return String(a).toLowerCase().localeCompare(String(b).toLowerCase()); }
    };

    $.fn.stupidtable = function (sortFns) {
        return this.each(function () {
            var table = $(this);
            table.data('fb-sorts', $.extend({}, SORTS, sortFns || {}));
            table.off('click.fbsort').on('click.fbsort', 'thead th', function () { $(this).stupidsort(); });
        });
    };

    $.fn.stupidsort = function (force) {
        var th = this.first(), table = th.closest('table');
        var fn = (table.data('fb-sorts') || SORTS)[th.data('sort')];
        if (!fn) { return this; }
        var column = th.index();
        var dir = force || (th.data('fb-dir') === 'asc' ? 'desc' : 'asc');
        var body = table.children('tbody');
        var rows = body.children('tr').get().map(function (tr, i) {
            var td = $(tr).children().eq(column), v = td.attr('data-sort-value');
            return [v === undefined ? td.text() : v, i, tr];
        });
        rows.sort(function (a, b) {
            var c = fn(a[0], b[0]);
            if (!c || isNaN(c)) { return a[1] - b[1]; }
            return dir === 'asc' ? c : -c;
        });
        $.each(rows, function (i, r) { body.append(r[2]); });
        table.find('thead th').data('fb-dir', null);
        th.data('fb-dir', dir);
        table.trigger('aftertablesort', {column: column, direction: dir, $th: th});
        return this;
    };

    /* ---- md5(): a stable key for localStorage (FNV-1a, four lanes; not MD5) -------- */
    if (typeof window.md5 !== 'function') {
        window.md5 = function (s) {
            s = unescape(encodeURIComponent(String(s)));
            var out = '';
            for (var lane = 0; lane < 4; lane++) {
                var h = (0x811c9dc5 ^ (lane * 0x9e3779b9)) >>> 0;
                for (var i = 0; i < s.length; i++) {
                    h ^= s.charCodeAt(i);
                    h = Math.imul(h, 0x01000193) >>> 0;
                }
                out += ('0000000' + h.toString(16)).slice(-8);
            }
            return out;
        };
    }

    /* ---- Bootstrap 3 pieces: tooltip, popover, modal, dropdown --------------------- */
    function value(v, el) { return typeof v === 'function' ? v.call(el) : v; }

    function place(box, el, placement) {
        var off = el.offset() || {top: 0, left: 0}, w = el.outerWidth(), h = el.outerHeight();
        var bw = box.outerWidth(), bh = box.outerHeight(), top, left;
        switch (String(value(placement, el[0]) || 'top').split(' ')[0]) {
            case 'bottom': top = off.top + h + 6; left = off.left + w / 2 - bw / 2; break;
            case 'left': top = off.top + h / 2 - bh / 2; left = off.left - bw - 6; break;
            case 'right': top = off.top + h / 2 - bh / 2; left = off.left + w + 6; break;
            default: top = off.top - bh - 6; left = off.left + w / 2 - bw / 2;
        }
        if (left < 0) { left = off.left + w + 6; }
        box.css({top: Math.max(0, top), left: Math.max(0, left)});
    }

    function floating(el, key, cls, fill) {
        hide(el, key);
        var box = $('<div class="' + cls + ' fb-floating" role="tooltip"/>');
        fill(box);
        $('body').append(box);
        el.data(key, box);
        return box;
    }

    function hide(el, key) {
        var box = el.data(key);
        if (box) { box.remove(); el.removeData(key); }
    }

    function showTooltip(el) {
        var o = el.data('fb-tip-opts') || {};
        var title = value(o.title, el[0]) || el.attr('data-original-title') || '';
        if (!title) { return; }
        var box = floating(el, 'fb-tip', 'tooltip in', function (box) {
            var inner = $('<div class="tooltip-inner"/>');
            if (o.html) { inner.html(title); } else { inner.text(title); }
            box.append(inner);
        });
        place(box, el, o.placement);
    }

    $.fn.tooltip = function (opt) {
        return this.each(function () {
            var el = $(this);
            if (typeof opt === 'string') {
                if (opt === 'show') { showTooltip(el); } else { hide(el, 'fb-tip'); }
                if (opt === 'destroy') { el.off('.fbtip').removeData('fb-tip-opts'); }
                return;
            }
            var o = $.extend({}, opt || {});
            if (!o.title && el.attr('title')) {
                el.attr('data-original-title', el.attr('title')).removeAttr('title');
            }
            el.data('fb-tip-opts', o);
            el.off('.fbtip')
                .on('mouseenter.fbtip', function () { showTooltip(el); })
                .on('mouseleave.fbtip click.fbtip', function () { hide(el, 'fb-tip'); });
        });
    };

    function showPopover(el) {
        var o = el.data('fb-pop-opts');
        if (!o) { return; }
        el.trigger('show.bs.popover');
        var box = floating(el, 'fb-pop', 'popover in', function (box) {
            var title = value(o.title, el[0]);
            if (title) { box.append($('<h3 class="popover-title"/>').text(title)); }
            var content = value(o.content, el[0]), body = $('<div class="popover-content"/>');
            if (content && (content.jquery || content.nodeType)) { body.append(content); }
            else if (o.html) { body.html(content || ''); } else { body.text(content || ''); }
            box.append(body);
        });
        place(box, el, o.placement);
        el.trigger('shown.bs.popover');
    }

    $.fn.popover = function (opt) {
        return this.each(function () {
            var el = $(this);
            if (typeof opt === 'string') {
                if (opt === 'show') { showPopover(el); } else { hide(el, 'fb-pop'); }
                if (opt === 'destroy') { el.off('.fbpop').removeData('fb-pop-opts'); }
                return;
            }
            var o = $.extend({trigger: 'click'}, opt || {});
            el.data('fb-pop-opts', o);
            el.off('.fbpop');
            if (/hover/.test(o.trigger)) {
                el.on('mouseenter.fbpop', function () { showPopover(el); })
                  .on('mouseleave.fbpop', function () { hide(el, 'fb-pop'); });
            } else if (/click/.test(o.trigger)) {
                el.on('click.fbpop', function () { if (el.data('fb-pop')) { hide(el, 'fb-pop'); } else { showPopover(el); } });
            }
        });
    };

    $.fn.modal = function (cmd) {
        return this.each(function () {
            if (cmd === 'hide') { $(this).removeClass('in').hide(); } else { $(this).addClass('in').show(); }
        });
    };

    $(document).on('click', '[data-dismiss="modal"]', function () { $(this).closest('.modal').modal('hide'); });
    $(document).on('click', '[data-toggle="dropdown"]', function () {
        var parent = $(this).parent(), open = parent.hasClass('open');
        $('.open').has('.dropdown-menu').removeClass('open');
        if (!open) { parent.addClass('open'); }
        return false;
    });
    $(document).on('click', function () { $('.open').has('.dropdown-menu').removeClass('open'); });
})(jQuery);
