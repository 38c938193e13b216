//! SVG plots of latency distributions: empirical CDFs on a log axis, written by hand.

use std::fmt::Write as _;

/// One distribution to plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// The values (any order).
    pub values: Vec<f64>,
}

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#17becf", "#bcbd22",
];

/// The colour of series `i`: the palette first, then hues spaced by the golden angle
/// (137.5°), so that no two series of one plot share a colour.
pub fn series_color(i: usize) -> String {
    if let Some(c) = COLORS.get(i) {
        return (*c).to_string();
    }
    let k = i - COLORS.len();
    let hue = (15.0 + k as f64 * 137.508) % 360.0;
    // Alternate lightness so that neighbouring hues differ in brightness too.
    let light = [0.38, 0.52, 0.30][k % 3];
    let (r, g, b) = hsl_to_rgb(hue, 0.70, light);
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn hsl_to_rgb(h: f64, s: f64, l: f64) -> (u8, u8, u8) {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = h / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    (to(r), to(g), to(b))
}

/// Width in pixels a 12 px sans-serif label needs, overestimated (7.5 px a character).
const LEGEND_CHAR_PX: f64 = 7.5;
/// Vertical distance between legend entries.
const LEGEND_ROW_PX: f64 = 20.0;

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Empirical CDFs of `series` on a log10 x axis, as a standalone SVG document.
pub fn cdf_svg(title: &str, x_label: &str, series: &[Series]) -> String {
    // The plot area is fixed; the canvas grows so that the legend (right of the plot,
    // one row per series) fits inside it, whatever the labels' length and number.
    let (pw, ph) = (570.0_f64, 380.0_f64);
    let (left, top, bottom) = (70.0, 40.0, 60.0);
    let labels: Vec<String> = series
        .iter()
        .map(|se| {
            format!(
                "{} (n={})",
                se.label,
                se.values.iter().filter(|v| v.is_finite()).count()
            )
        })
        .collect();
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
    let right = 15.0 + 32.0 + longest * LEGEND_CHAR_PX + 15.0;
    let w = (left + pw + right).ceil();
    let legend_bottom = top + 10.0 + series.len() as f64 * LEGEND_ROW_PX;
    let h = (top + ph + bottom).max(legend_bottom + 10.0).ceil();
    let positive = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| *v > 0.0 && v.is_finite());
    let (mut lo, mut hi) = (f64::INFINITY, 0.0_f64);
    for v in positive {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        lo = 1.0;
        hi = 10.0;
    }
    let lo_dec = lo.log10().floor();
    let hi_dec = hi.log10().ceil().max(lo_dec + 1.0);
    let x = |v: f64| {
        let v = v.max(10f64.powf(lo_dec));
        left + (v.log10() - lo_dec) / (hi_dec - lo_dec) * pw
    };
    let y = |p: f64| top + (1.0 - p) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        xml_escape(title)
    );
    // Grid: decades on x, quartiles on y.
    let mut d = lo_dec;
    while d <= hi_dec + 1e-9 {
        let xv = x(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{}" stroke="#ddd"/><text x="{xv:.1}" y="{}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 18.0,
            xml_escape(&decade_label(d))
        );
        d += 1.0;
    }
    for q in [0.0, 0.25, 0.5, 0.75, 0.99, 1.0] {
        let yv = y(q);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yv:.1}" x2="{}" y2="{yv:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{q}</text>"##,
            left + pw,
            left - 6.0,
            yv + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 15.0,
        xml_escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">fraction of samples ≤ x</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    for (i, se) in series.iter().enumerate() {
        let color = series_color(i);
        let mut v: Vec<f64> = se
            .values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n > 0 {
            let mut pts = format!("{:.1},{:.1}", x(v[0]), y(0.0));
            // A step function; thinned to at most ~2000 points per series.
            let step = (n / 2000).max(1);
            for (k, val) in v.iter().enumerate() {
                if k % step != 0 && k != n - 1 {
                    continue;
                }
                let p_before = k as f64 / n as f64;
                let p_after = (k + 1) as f64 / n as f64;
                let xv = x(*val);
                let _ = write!(pts, " {xv:.1},{:.1} {xv:.1},{:.1}", y(p_before), y(p_after));
            }
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>"#
            );
        }
        let ly = top + 10.0 + i as f64 * LEGEND_ROW_PX;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 25.0,
            lx + 32.0,
            ly + 4.0,
            xml_escape(&labels[i])
        );
    }
    s.push_str("</svg>\n");
    s
}

fn decade_label(d: f64) -> String {
    let v = 10f64.powf(d);
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_of_two_series() {
        let svg = cdf_svg(
            "t <x>",
            "µs",
            &[
                Series {
                    label: "hooks".into(),
                    values: vec![10.0, 20.0, 30.0],
                },
                Series {
                    label: "pull".into(),
                    values: vec![5000.0, 60000.0],
                },
                Series {
                    label: "empty".into(),
                    values: vec![],
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("t &lt;x&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    /// (width, height) of an SVG document from its root element.
    fn svg_size(svg: &str) -> (f64, f64) {
        let attr = |name: &str| -> f64 {
            let i = svg.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            svg[i..].split('"').next().unwrap().parse().unwrap()
        };
        (attr("width"), attr("height"))
    }

    #[test]
    fn every_series_has_its_own_colour_and_the_legend_fits() {
        let series: Vec<Series> = (0..30)
            .map(|i| Series {
                label: format!("self-place prototype with a long label, {i} vCPUs"),
                values: vec![1.0 + i as f64, 100.0],
            })
            .collect();
        let svg = cdf_svg("many", "µs", &series);
        let colours: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| {
                l.split("stroke=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(colours.len(), 30);
        let distinct: std::collections::BTreeSet<&&str> = colours.iter().collect();
        assert_eq!(distinct.len(), 30, "{colours:?}");
        let (w, h) = svg_size(&svg);
        for l in svg
            .lines()
            .filter(|l| l.starts_with("<line x1=") && l.contains("<text"))
        {
            let t = &l[l.find("<text").unwrap()..];
            let num_attr = |name: &str| -> f64 {
                let i = t.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                t[i..].split('"').next().unwrap().parse().unwrap()
            };
            let label = t.split('>').nth(1).unwrap().split('<').next().unwrap();
            let right = num_attr("x") + label.chars().count() as f64 * LEGEND_CHAR_PX;
            assert!(
                right <= w,
                "legend entry {label:?} ends at {right} > width {w}"
            );
            assert!(
                num_attr("y") <= h,
                "legend entry {label:?} below the canvas"
            );
        }
    }
}
