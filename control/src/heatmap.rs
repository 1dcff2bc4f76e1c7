//! The page-heat picture (`GET /heatmap`): an SVG with the guest-physical address space on the
//! horizontal axis, the requesting nodes on the vertical one, and each cell coloured by how many
//! requests the homes counted for pages of that address range from that node.
//!
//! The colour scale is logarithmic (heat is heavy-tailed: a handful of hot pages next to
//! thousands touched once) and perceptually ordered (a viridis-like ramp from dark blue to
//! yellow); cells with no request are left as the light background. Wide address spaces are
//! downsampled by summing neighbouring buckets into one column, so the picture stays a few
//! hundred KiB at most. Above the plot a band shows which node homes which part of the address
//! space.

use std::fmt::Write as _;

use crate::handle::Heat;

/// The most columns a picture may be asked for.
pub const MAX_COLUMNS: usize = 4096;

/// The most nodes (rows) a picture can show.
pub const MAX_NODES: usize = 1024;

/// The most cells (rows × columns) drawn; more columns are merged.
const MAX_CELLS: usize = 64 * 1024;

/// Colour steps of the scale.
const LEVELS: usize = 32;

/// Plot width in pixels.
const PLOT_W: f64 = 1024.0;

/// Left margin (node labels).
const LEFT: f64 = 104.0;

/// Top margin (title, home band).
const TOP: f64 = 92.0;

/// Bottom margin (address ticks and axis title).
const BOTTOM: f64 = 70.0;

/// Width of the legend area right of the plot.
const LEGEND_W: f64 = 150.0;

/// Background of cells without requests.
const EMPTY: &str = "#f0f0f0";

/// Anchors of the colour ramp, low to high (viridis).
const RAMP: [(u8, u8, u8); 5] = [
    (0x44, 0x01, 0x54),
    (0x3b, 0x52, 0x8b),
    (0x21, 0x91, 0x8c),
    (0x5e, 0xc9, 0x62),
    (0xfd, 0xe7, 0x25),
];

/// Options of a picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeatmapOptions {
    /// At most this many columns (1..=[`MAX_COLUMNS`]); buckets beyond are summed in groups.
    pub max_columns: usize,
    /// The picture's title.
    pub title: String,
}

impl Default for HeatmapOptions {
    fn default() -> Self {
        HeatmapOptions {
            max_columns: 512,
            title: "Page heat: requests per address range, by requesting node".to_string(),
        }
    }
}

/// The part of the address space a node homes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HomeRange {
    /// The node.
    pub node: u16,
    /// First guest-physical address.
    pub start: u64,
    /// Bytes.
    pub len: u64,
}

/// Why no picture could be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeatmapError {
    /// The column count asked for is out of range.
    #[error("columns must be between 1 and {limit}, not {got}")]
    Columns {
        /// What was asked for.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// More nodes than rows can show.
    #[error("{got} nodes are more than a heatmap shows ({limit})")]
    TooManyNodes {
        /// Nodes in the heat.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// The heat has buckets of zero bytes.
    #[error("the node reported page heat with buckets of 0 bytes; this is a bug in the node")]
    ZeroBucket,
    /// A bucket's counts do not match the node list.
    #[error(
        "the node reported page heat whose bucket {bucket} has {got} counts for {want} nodes; \
         this is a bug in the node"
    )]
    Shape {
        /// The bucket.
        bucket: usize,
        /// Counts in it.
        got: usize,
        /// Nodes.
        want: usize,
    },
}

/// Buckets summed into columns.
struct Grid {
    /// Buckets per column.
    group: usize,
    /// Columns.
    cols: usize,
    /// `cells[node][column]`.
    cells: Vec<Vec<u64>>,
    /// The largest cell.
    max: u64,
    /// All requests.
    total: u128,
}

fn downsample(heat: &Heat, max_columns: usize) -> Grid {
    let nb = heat.counts.len();
    let nn = heat.nodes.len();
    let budget = (MAX_CELLS / nn.max(1)).max(1);
    let want = nb.min(max_columns).min(budget).max(1);
    let group = nb.div_ceil(want).max(1);
    let cols = nb.div_ceil(group);
    let mut cells = vec![vec![0u64; cols]; nn];
    let mut total = 0u128;
    for (b, row) in heat.counts.iter().enumerate() {
        for (k, &v) in row.iter().enumerate() {
            let c = &mut cells[k][b / group];
            *c = c.saturating_add(v);
            total += u128::from(v);
        }
    }
    let max = cells.iter().flatten().copied().max().unwrap_or(0);
    Grid {
        group,
        cols,
        cells,
        max,
        total,
    }
}

/// The colour step of a count: 0 for none, else 1..=LEVELS on a log scale up to `max`.
fn level(v: u64, max: u64) -> usize {
    if v == 0 {
        return 0;
    }
    if max <= 1 {
        return LEVELS;
    }
    let t = (v as f64).ln() / (max as f64).ln();
    1 + (t.clamp(0.0, 1.0) * (LEVELS - 1) as f64).round() as usize
}

/// The colour of step `l` (1..=LEVELS).
fn colour(l: usize) -> String {
    let t = (l.saturating_sub(1)) as f64 / (LEVELS - 1) as f64;
    let x = t * (RAMP.len() - 1) as f64;
    let i = (x.floor() as usize).min(RAMP.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round() as u8;
    let (a, b) = (RAMP[i], RAMP[i + 1]);
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

/// Bytes in binary units: `512 MiB`, `1.5 GiB`.
fn human(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if (v - v.round()).abs() < 0.05 {
        format!("{} {}", v.round(), UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// XML text escaping.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// The SVG picture of `heat`. `homes` (may be empty) labels who homes what above the plot.
pub fn render_svg(
    heat: &Heat,
    homes: &[HomeRange],
    opts: &HeatmapOptions,
) -> Result<String, HeatmapError> {
    if opts.max_columns == 0 || opts.max_columns > MAX_COLUMNS {
        return Err(HeatmapError::Columns {
            got: opts.max_columns,
            limit: MAX_COLUMNS,
        });
    }
    let nn = heat.nodes.len();
    if nn > MAX_NODES {
        return Err(HeatmapError::TooManyNodes {
            got: nn,
            limit: MAX_NODES,
        });
    }
    for (bucket, row) in heat.counts.iter().enumerate() {
        if row.len() != nn {
            return Err(HeatmapError::Shape {
                bucket,
                got: row.len(),
                want: nn,
            });
        }
    }
    if !heat.counts.is_empty() && heat.bucket_bytes == 0 {
        return Err(HeatmapError::ZeroBucket);
    }
    if heat.counts.is_empty() || nn == 0 {
        return Ok(empty_picture(&opts.title));
    }

    let g = downsample(heat, opts.max_columns);
    // Rows of 12 to 32 px, at least 160 px in all (the legend's height) when few nodes.
    let row_h = if nn <= 64 {
        (640.0 / nn as f64).clamp(12.0, 32.0).max(160.0 / nn as f64)
    } else {
        (768.0 / nn as f64).max(0.75)
    };
    let plot_h = row_h * nn as f64;
    let col_w = PLOT_W / g.cols as f64;
    let width = LEFT + PLOT_W + LEGEND_W;
    let height = TOP + plot_h.max(legend_height(plot_h) + 24.0) + BOTTOM;
    let column_bytes = heat.bucket_bytes as f64 * g.group as f64;
    let span = column_bytes * g.cols as f64;
    let x_of = |addr: f64| LEFT + addr / span * PLOT_W;

    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"DejaVu Sans, Helvetica, Arial, \
         sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
    );
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"26\" font-size=\"18\" font-weight=\"bold\">{}</text>",
        esc(&opts.title)
    );
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"46\" font-size=\"12\" fill=\"#444\">{} requests counted by the \
         homes; hottest cell {} ({} node{}, {} buckets of {}, {} per column)</text>",
        g.total,
        g.max,
        nn,
        if nn == 1 { "" } else { "s" },
        heat.counts.len(),
        human(heat.bucket_bytes as f64),
        g.group
    );

    // Who homes what.
    let band_y = TOP - 26.0;
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#444\">home</text>",
        LEFT - 8.0,
        band_y + 12.0
    );
    for (i, h) in homes.iter().enumerate() {
        let x0 = x_of(h.start as f64).clamp(LEFT, LEFT + PLOT_W);
        let x1 = x_of(h.start as f64 + h.len as f64).clamp(LEFT, LEFT + PLOT_W);
        if x1 <= x0 {
            continue;
        }
        let fill = if i % 2 == 0 { "#d6e2f0" } else { "#b9cbe2" };
        let _ = writeln!(
            s,
            "<rect x=\"{x0:.2}\" y=\"{band_y:.1}\" width=\"{:.2}\" height=\"16\" fill=\"{fill}\"/>",
            x1 - x0
        );
        if x1 - x0 >= 44.0 {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">node {}</text>",
                (x0 + x1) / 2.0,
                band_y + 12.0,
                h.node
            );
        }
        if h.start > 0 && x0 > LEFT && homes.len() <= 16 {
            let _ = writeln!(
                s,
                "<line x1=\"{x0:.2}\" y1=\"{band_y:.1}\" x2=\"{x0:.2}\" y2=\"{:.1}\" \
                 stroke=\"#666\" stroke-dasharray=\"3,3\"/>",
                TOP + plot_h
            );
        }
    }

    // Home migration: which columns hold pages that moved here, or whose home moved away.
    let moved = |v: &[u64]| -> Vec<u64> {
        let mut cols = vec![0u64; g.cols];
        for (b, &n) in v.iter().enumerate().take(heat.counts.len()) {
            cols[b / g.group] = cols[b / g.group].saturating_add(n);
        }
        cols
    };
    let (into, away) = (moved(&heat.homes_in), moved(&heat.homes_out));
    let (n_in, n_out): (u64, u64) = (into.iter().sum(), away.iter().sum());
    if n_in > 0 || n_out > 0 {
        let _ = writeln!(
            s,
            "<text x=\"{LEFT}\" y=\"60\" font-size=\"11\" fill=\"#444\">home migration: {n_in} \
             pages of other ranges homed here (green), {n_out} pages of this node's range homed \
             elsewhere (orange)</text>"
        );
        let strip_y = band_y + 18.0;
        for (cols, fill, what, dy) in [
            (&into, "#2e9e4f", "homed here from other ranges", 0.0),
            (
                &away,
                "#e07b1f",
                "of this node's range homed elsewhere",
                3.0,
            ),
        ] {
            for (c, &n) in cols.iter().enumerate().filter(|(_, &n)| n > 0) {
                let _ = writeln!(
                    s,
                    "<rect x=\"{:.2}\" y=\"{:.1}\" width=\"{:.2}\" height=\"3\" fill=\"{fill}\">\
                     <title>{n} pages {what}</title></rect>",
                    LEFT + c as f64 * col_w,
                    strip_y + dy,
                    col_w.max(1.0)
                );
            }
        }
    }

    // The cells: one rectangle per run of equal colour in a row.
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{PLOT_W}\" height=\"{plot_h:.2}\" fill=\"{EMPTY}\"/>\n\
         <g shape-rendering=\"crispEdges\">"
    );
    for (k, row) in g.cells.iter().enumerate() {
        let y = TOP + k as f64 * row_h;
        let mut c = 0;
        while c < g.cols {
            let l = level(row[c], g.max);
            let mut e = c + 1;
            while e < g.cols && level(row[e], g.max) == l {
                e += 1;
            }
            if l > 0 {
                let _ = writeln!(
                    s,
                    "<rect x=\"{:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{row_h:.2}\" fill=\"{}\"/>",
                    LEFT + c as f64 * col_w,
                    (e - c) as f64 * col_w,
                    colour(l)
                );
            }
            c = e;
        }
    }
    s.push_str("</g>\n");
    // Re-draw the home boundaries over the cells.
    // (Only for a few homes: with dozens, the band alone is clearer.)
    for h in homes.iter().filter(|h| h.start > 0 && homes.len() <= 16) {
        let x = x_of(h.start as f64);
        if x > LEFT && x < LEFT + PLOT_W {
            let _ = writeln!(
                s,
                "<line x1=\"{x:.2}\" y1=\"{TOP}\" x2=\"{x:.2}\" y2=\"{:.1}\" stroke=\"#ffffff\" \
                 stroke-opacity=\"0.7\" stroke-dasharray=\"3,3\"/>",
                TOP + plot_h
            );
        }
    }
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{PLOT_W}\" height=\"{plot_h:.2}\" fill=\"none\" \
         stroke=\"#333\"/>"
    );

    // Node labels, thinned out when rows are too low for one each.
    let stride = (12.0 / row_h).ceil().max(1.0) as usize;
    let font = row_h.clamp(8.0, 12.0);
    for (k, id) in heat.nodes.iter().enumerate().step_by(stride) {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.2}\" font-size=\"{font:.0}\" text-anchor=\"end\" \
             dominant-baseline=\"central\">node {id}</text>",
            LEFT - 8.0,
            TOP + (k as f64 + 0.5) * row_h
        );
    }
    let _ = writeln!(
        s,
        "<text transform=\"translate(18,{:.1}) rotate(-90)\" font-size=\"13\" \
         text-anchor=\"middle\">requesting node</text>",
        TOP + plot_h / 2.0
    );

    // Address ticks: a power of two apart, at most 8 intervals.
    let mut step = 1.0f64;
    while span / step > 8.0 {
        step *= 2.0;
    }
    let axis_y = TOP + plot_h;
    let mut a = 0.0f64;
    while a <= span + 0.5 {
        let x = x_of(a);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.2}\" y1=\"{axis_y:.1}\" x2=\"{x:.2}\" y2=\"{:.1}\" stroke=\"#333\"/>\n\
             <text x=\"{x:.2}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            axis_y + 5.0,
            axis_y + 18.0,
            human(a)
        );
        a += step;
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"middle\">guest-physical \
         address</text>",
        LEFT + PLOT_W / 2.0,
        axis_y + 42.0
    );

    legend(&mut s, g.max, plot_h);
    s.push_str("</svg>\n");
    Ok(s)
}

/// Height of the colour bar.
fn legend_height(plot_h: f64) -> f64 {
    plot_h.clamp(160.0, 320.0)
}

/// The colour bar with its count labels (log scale), right of the plot.
fn legend(s: &mut String, max: u64, plot_h: f64) {
    let x = LEFT + PLOT_W + 28.0;
    let h = legend_height(plot_h);
    let step = h / LEVELS as f64;
    let _ = writeln!(
        s,
        "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"12\">requests</text>\n\
         <text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#444\">(log scale)</text>",
        TOP - 28.0,
        TOP - 14.0
    );
    for l in 1..=LEVELS {
        let y = TOP + h - l as f64 * step;
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"{y:.2}\" width=\"18\" height=\"{:.2}\" fill=\"{}\"/>",
            step + 0.3,
            colour(l)
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{x:.1}\" y=\"{TOP}\" width=\"18\" height=\"{h:.1}\" fill=\"none\" stroke=\"#333\"/>"
    );
    // Labels from the top: the maximum, then the powers of ten below it and 1, each drawn
    // only when it does not crowd the one above.
    let mut marks = vec![max.max(1)];
    let mut p = 1u64;
    let mut below = Vec::new();
    while p < max {
        below.push(p);
        p = match p.checked_mul(10) {
            Some(n) => n,
            None => break,
        };
    }
    marks.extend(below.into_iter().rev());
    let mut last_y = f64::NEG_INFINITY;
    for m in marks {
        let l = level(m, max.max(1));
        let y = TOP + h - (l as f64 - 0.5) * step;
        if y - last_y < 16.0 {
            continue;
        }
        let _ = writeln!(
            s,
            "<line x1=\"{:.1}\" y1=\"{y:.2}\" x2=\"{:.1}\" y2=\"{y:.2}\" stroke=\"#333\"/>\n\
             <text x=\"{:.1}\" y=\"{y:.2}\" font-size=\"11\" dominant-baseline=\"central\">{m}</text>",
            x + 18.0,
            x + 22.0,
            x + 25.0
        );
        last_y = y;
    }
    let y0 = TOP + h + 10.0;
    let _ = writeln!(
        s,
        "<rect x=\"{x:.1}\" y=\"{y0:.1}\" width=\"18\" height=\"12\" fill=\"{EMPTY}\" stroke=\"#333\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" dominant-baseline=\"central\">0</text>",
        x + 25.0,
        y0 + 6.0
    );
}

/// The picture when nothing was counted yet.
fn empty_picture(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"120\" \
         viewBox=\"0 0 640 120\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n\
         <text x=\"20\" y=\"36\" font-size=\"18\" font-weight=\"bold\">{}</text>\n\
         <text x=\"20\" y=\"72\" font-size=\"14\" fill=\"#444\">No page requests counted yet.</text>\n\
         </svg>\n",
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heat(nodes: usize, buckets: usize, f: impl Fn(usize, usize) -> u64) -> Heat {
        Heat {
            bucket_bytes: 2 << 20,
            nodes: (0..nodes as u16).collect(),
            counts: (0..buckets)
                .map(|b| (0..nodes).map(|k| f(b, k)).collect())
                .collect(),
            homes_in: vec![],
            homes_out: vec![],
        }
    }

    #[test]
    fn moved_homes_are_marked_above_the_plot() {
        let plain = render_svg(&heat(2, 8, |_, _| 1), &[], &HeatmapOptions::default()).unwrap();
        assert!(!plain.contains("home migration"), "no moves, no strip");
        let mut h = heat(2, 8, |_, _| 1);
        h.homes_in = vec![0, 0, 3, 0, 0, 0, 0, 1];
        h.homes_out = vec![5, 0, 0, 0, 0, 0, 0, 0];
        let svg = render_svg(&h, &[], &HeatmapOptions::default()).unwrap();
        assert!(svg.contains(
            "home migration: 4 pages of other ranges homed here (green), 5 pages of this \
             node's range homed elsewhere (orange)"
        ));
        assert_eq!(count(&svg, "fill=\"#2e9e4f\""), 2);
        assert_eq!(count(&svg, "fill=\"#e07b1f\""), 1);
        assert!(svg.contains("<title>3 pages homed here from other ranges</title>"));
        // Merged columns add up.
        let opts = HeatmapOptions {
            max_columns: 2,
            ..HeatmapOptions::default()
        };
        let svg = render_svg(&h, &[], &opts).unwrap();
        assert!(svg.contains("<title>3 pages homed here from other ranges</title>"));
        assert!(svg.contains("<title>1 pages homed here from other ranges</title>"));
    }

    fn count(s: &str, pat: &str) -> usize {
        s.matches(pat).count()
    }

    #[test]
    fn levels_are_monotonic_and_bounded() {
        assert_eq!(level(0, 1000), 0);
        assert_eq!(level(1, 1000), 1);
        assert_eq!(level(1000, 1000), LEVELS);
        assert_eq!(level(1, 1), LEVELS);
        let mut prev = 0;
        for v in 1..=1000 {
            let l = level(v, 1000);
            assert!(l >= prev && (1..=LEVELS).contains(&l));
            prev = l;
        }
        assert_eq!(colour(1), "#440154");
        assert_eq!(colour(LEVELS), "#fde725");
    }

    #[test]
    fn downsampling_sums_neighbouring_buckets() {
        let h = heat(2, 10, |b, k| (b * 10 + k) as u64);
        let g = downsample(&h, 4);
        assert_eq!((g.group, g.cols), (3, 4));
        assert_eq!(g.cells[0], vec![30, 120, 210, 90]);
        assert_eq!(g.cells[1], vec![33, 123, 213, 91]);
        assert_eq!(g.total, (0..10).map(|b| (20 * b + 1) as u128).sum::<u128>());
        assert_eq!(g.max, 213);
    }

    #[test]
    fn cells_budget_bounds_the_picture_for_many_nodes() {
        let h = heat(64, 4096, |b, k| ((b + k) % 7) as u64);
        let svg = render_svg(&h, &[], &HeatmapOptions::default()).unwrap();
        let g = downsample(&h, 512);
        assert!(g.cols * 64 <= MAX_CELLS);
        assert!(svg.len() < 4 << 20, "{} bytes", svg.len());
        for k in [0, 1, 63] {
            assert!(svg.contains(&format!(">node {k}</text>")));
        }
    }

    #[test]
    fn one_hot_cell_draws_one_rectangle_of_the_top_colour() {
        let h = heat(3, 100, |b, k| u64::from(b == 42 && k == 1) * 5);
        let svg = render_svg(&h, &[], &HeatmapOptions::default()).unwrap();
        let top = colour(LEVELS);
        // The cell, plus the legend's top step.
        assert_eq!(count(&svg, &format!("fill=\"{top}\"")), 2);
        assert!(svg.contains("5 requests counted"));
        assert!(svg.contains("guest-physical address"));
        assert!(svg.contains("requesting node"));
    }

    #[test]
    fn runs_of_one_colour_merge() {
        let h = heat(1, 50, |_, _| 9);
        let svg = render_svg(&h, &[], &HeatmapOptions::default()).unwrap();
        let top = colour(LEVELS);
        assert_eq!(count(&svg, &format!("fill=\"{top}\"")), 2);
    }

    #[test]
    fn home_band_labels_each_home() {
        let h = heat(2, 64, |b, _| b as u64);
        let homes = [
            HomeRange {
                node: 0,
                start: 0,
                len: 64 << 20,
            },
            HomeRange {
                node: 7,
                start: 64 << 20,
                len: 64 << 20,
            },
        ];
        let svg = render_svg(&h, &homes, &HeatmapOptions::default()).unwrap();
        assert!(svg.contains(">node 7</text>"));
        assert!(svg.contains("stroke-dasharray"));
        assert!(svg.contains(">64 MiB</text>"));
    }

    #[test]
    fn bad_heat_is_an_error_not_a_panic() {
        let mut h = heat(2, 3, |_, _| 1);
        h.counts[1].pop();
        assert_eq!(
            render_svg(&h, &[], &HeatmapOptions::default()),
            Err(HeatmapError::Shape {
                bucket: 1,
                got: 1,
                want: 2
            })
        );
        let mut z = heat(1, 1, |_, _| 1);
        z.bucket_bytes = 0;
        assert_eq!(
            render_svg(&z, &[], &HeatmapOptions::default()),
            Err(HeatmapError::ZeroBucket)
        );
        let opts = HeatmapOptions {
            max_columns: 0,
            ..HeatmapOptions::default()
        };
        assert!(matches!(
            render_svg(&z, &[], &opts),
            Err(HeatmapError::Columns { got: 0, .. })
        ));
        let many = heat(MAX_NODES + 1, 1, |_, _| 1);
        assert!(matches!(
            render_svg(&many, &[], &HeatmapOptions::default()),
            Err(HeatmapError::TooManyNodes { .. })
        ));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut h = heat(2, 5, |_, _| u64::MAX);
        h.bucket_bytes = u64::MAX;
        let svg = render_svg(&h, &[], &HeatmapOptions::default()).unwrap();
        assert!(svg.ends_with("</svg>\n"));
    }

    #[test]
    fn nothing_counted_is_a_picture_that_says_so() {
        let h = Heat {
            bucket_bytes: 4096,
            nodes: vec![0, 1],
            counts: vec![],
            homes_in: vec![],
            homes_out: vec![],
        };
        let svg = render_svg(&h, &[], &HeatmapOptions::default()).unwrap();
        assert!(svg.contains("No page requests counted yet."));
    }

    #[test]
    fn titles_are_escaped() {
        let h = heat(1, 1, |_, _| 1);
        let opts = HeatmapOptions {
            title: "a<b & \"c\"".into(),
            ..HeatmapOptions::default()
        };
        let svg = render_svg(&h, &[], &opts).unwrap();
        assert!(svg.contains("a&lt;b &amp; &quot;c&quot;"));
    }
}
