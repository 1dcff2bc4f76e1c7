//! The percentile-distribution plot (`--plot FILE`), the familiar HdrHistogram curve: the
//! x axis is the percentile on a log scale of 1/(1 − p) (0%, 90%, 99%, 99.9%, ...), the y axis
//! the latency (log scale), one line per scenario. Written as a self-contained SVG.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// One line of the plot.
#[derive(Debug)]
pub struct Series<'a> {
    /// The legend text.
    pub label: String,
    /// Latencies in ns.
    pub hist: &'a Histogram<u64>,
}

const W: f64 = 1000.0;
const H: f64 = 600.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 260.0;
/// Space above the plot area before any subtitle line.
const TOP_BASE: f64 = 46.0;
/// Height of one subtitle line.
const LINE: f64 = 16.0;
const BOTTOM: f64 = 60.0;
/// Points per line.
const STEPS: usize = 300;
const COLORS: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#000000", "#aec7e8",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct_label(decade: u32) -> &'static str {
    const LABELS: [&str; 6] = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
    LABELS[(decade as usize).min(LABELS.len() - 1)]
}

fn us_label(log_us: i32) -> String {
    let us = 10f64.powi(log_us);
    if us >= 1_000_000.0 {
        format!("{}s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{}ms", us / 1e3)
    } else {
        format!("{us}us")
    }
}

/// The plot as SVG text; `subtitle` may hold several lines (`\n`). Series without samples are
/// left out of the lines (and say so in the legend).
pub fn svg(title: &str, subtitle: &str, series: &[Series<'_>]) -> String {
    let sub_lines: Vec<&str> = subtitle.lines().collect();
    let top = TOP_BASE + LINE * sub_lines.len() as f64;
    let counts = series
        .iter()
        .map(|s| s.hist.len())
        .max()
        .unwrap_or(1)
        .max(10);
    // Up to the percentile the largest series resolves (1 − 1/count), at most 99.999%.
    let x_decades = ((counts as f64).log10().ceil() as u32).clamp(1, 5);
    let mut lo_us = f64::MAX;
    let mut hi_us = 0f64;
    for s in series.iter().filter(|s| !s.hist.is_empty()) {
        lo_us = lo_us.min(s.hist.min().max(1) as f64 / 1e3);
        hi_us = hi_us.max(s.hist.max().max(1) as f64 / 1e3);
    }
    if hi_us == 0.0 {
        lo_us = 1.0;
        hi_us = 10.0;
    }
    let y_lo = lo_us.log10().floor() as i32;
    let y_hi = (hi_us.log10().ceil() as i32).max(y_lo + 1);
    let pw = W - LEFT - RIGHT;
    let ph = H - top - BOTTOM;
    let x_of = |x: f64| LEFT + x / f64::from(x_decades) * pw;
    let y_of = |us: f64| {
        let l = us.max(1e-3).log10();
        top + ph - (l - f64::from(y_lo)) / f64::from(y_hi - y_lo) * ph
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(o, "<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>");
    let _ = writeln!(
        o,
        "<text x=\"{LEFT}\" y=\"24\" font-size=\"16\">{}</text>",
        esc(title)
    );
    for (i, line) in sub_lines.iter().enumerate() {
        let _ = writeln!(
            o,
            "<text x=\"{LEFT}\" y=\"{:.1}\" fill=\"#555\">{}</text>",
            42.0 + LINE * i as f64,
            esc(line)
        );
    }
    // Grid and axes.
    for d in 0..=x_decades {
        let x = x_of(f64::from(d));
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + ph,
            top + ph + 18.0,
            pct_label(d)
        );
    }
    for l in y_lo..=y_hi {
        let y = y_of(10f64.powi(l));
        let _ = writeln!(
            o,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            us_label(l)
        );
    }
    let _ = writeln!(
        o,
        "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" \
         stroke=\"#333\"/>"
    );
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>",
        LEFT + pw / 2.0,
        H - 14.0
    );
    let _ = writeln!(
        o,
        "<text transform=\"translate(18 {:.1}) rotate(-90)\" text-anchor=\"middle\">\
         fault service time (log scale)</text>",
        top + ph / 2.0
    );
    // Lines and legend.
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // After the palette is used up, lines repeat its colours dashed.
        let dash = match i / COLORS.len() {
            0 => "",
            1 => " stroke-dasharray=\"6 3\"",
            _ => " stroke-dasharray=\"2 2\"",
        };
        let ly = top + 14.0 + i as f64 * 18.0;
        let lx = LEFT + pw + 14.0;
        let n = s.hist.len();
        let legend = if n == 0 {
            format!("{} (no samples)", s.label)
        } else {
            s.label.clone()
        };
        let _ = writeln!(
            o,
            "<line x1=\"{lx:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" \
             stroke-width=\"2\"{dash}/><text x=\"{:.1}\" y=\"{ly:.1}\">{}</text>",
            ly - 4.0,
            lx + 22.0,
            ly - 4.0,
            lx + 28.0,
            esc(&legend)
        );
        if n == 0 {
            continue;
        }
        let x_end = ((n as f64).log10()).min(f64::from(x_decades));
        let mut pts = String::new();
        for k in 0..=STEPS {
            let x = x_end * k as f64 / STEPS as f64;
            let q = 1.0 - 10f64.powf(-x);
            let us = s.hist.value_at_quantile(q) as f64 / 1e3;
            let _ = write!(pts, "{:.1},{:.1} ", x_of(x), y_of(us));
        }
        let _ = writeln!(
            o,
            "<polyline class=\"series\" data-label=\"{}\" fill=\"none\" stroke=\"{color}\" \
             stroke-width=\"1.5\"{dash} points=\"{}\"/>",
            esc(&s.label),
            pts.trim_end()
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_polyline_per_series_with_axes_labelled() {
        let mut a = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
        let mut b = a.clone();
        for v in 1..=1000u64 {
            a.record(v * 20).unwrap();
            b.record(v * 200).unwrap();
        }
        let empty = a.clone();
        let mut empty = empty;
        empty.reset();
        let s = svg(
            "t",
            "sub <&>\nsecond line",
            &[
                Series {
                    label: "remote-read".into(),
                    hist: &a,
                },
                Series {
                    label: "pingpong".into(),
                    hist: &b,
                },
                Series {
                    label: "none".into(),
                    hist: &empty,
                },
            ],
        );
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("data-label=\"remote-read\""));
        assert!(s.contains("99.9%"), "three decades for 1000 samples");
        assert!(s.contains("sub &lt;&amp;&gt;"));
        assert!(s.contains(">second line</text>"));
        assert!(s.contains("none (no samples)"));
        assert!(s.trim_end().ends_with("</svg>"));
    }
}
