//! `latency.svg`: two panels that fill the image — latency by percentile (top) and requests
//! per second over the measured period, completed and each kind of error stacked (bottom,
//! errors by status and code) — each with a y-axis
//! scale, labelled axes with units and a legend. Dependency-free SVG; the integration test
//! renders it to PNG with `rsvg-convert` and looks at the pixels.

use std::fmt::Write as _;

use crate::report::Report;

pub(crate) const WIDTH: f64 = 720.0;
pub(crate) const HEIGHT: f64 = 480.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = WIDTH - 20.0;
/// Series colours (the test looks for them in the rendered image).
pub(crate) const LATENCY: &str = "#1f5fbf";
pub(crate) const COMPLETED: &str = "#1f9f4f";
pub(crate) const ERRORS: &str = "#d0202a";
/// Error kinds after the first, by count; past these, "other errors".
const MORE_ERRORS: [&str; 2] = ["#e08a00", "#7b3fb5"];
const OTHER_ERRORS: &str = "#666666";

/// A plot area: its top and bottom in pixels, its y scale and its data.
struct Panel<'a> {
    top: f64,
    bottom: f64,
    y_max: f64,
    y_label: &'a str,
    x_label: &'a str,
    /// (tick position 0..=1, label)
    x_ticks: Vec<(f64, String)>,
    content: Content,
    /// (name, colour)
    legend: Vec<(String, &'static str)>,
}

/// What a panel plots.
enum Content {
    /// A line through evenly spaced points.
    Line { colour: &'static str, values: Vec<f64> },
    /// One bar per second: completed at the bottom, each kind of error stacked on top.
    Bars {
        completed: Vec<f64>,
        failed: Vec<(&'static str, Vec<f64>)>,
    },
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `v` (a y-axis maximum a reader can read).
fn nice(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= v * 0.999_999)
        .unwrap_or(10.0 * magnitude)
}

fn number(v: f64) -> String {
    if v >= 100.0 {
        return format!("{v:.0}");
    }
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl Panel<'_> {
    fn draw(&self, out: &mut String) {
        let (top, bottom) = (self.top, self.bottom);
        let y = |v: f64| bottom - (bottom - top) * (v / self.y_max).clamp(0.0, 1.0);
        // Grid and y scale: 0, ½ and the top of the scale.
        for step in 0..=4 {
            let v = self.y_max * f64::from(step) / 4.0;
            let _ = write!(
                out,
                "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#dddddd\"/>\
                 <text x=\"{1}\" y=\"{2:.1}\" font-size=\"11\" text-anchor=\"end\">{3}</text>",
                y(v),
                LEFT - 6.0,
                y(v) + 4.0,
                number(v)
            );
        }
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{top}\" y2=\"{bottom}\" stroke=\"black\"/>\
             <line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{bottom}\" y2=\"{bottom}\" stroke=\"black\"/>\
             <text transform=\"translate(16 {0:.1}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">{1}</text>\
             <text x=\"{2:.1}\" y=\"{3:.1}\" font-size=\"12\" text-anchor=\"middle\">{4}</text>",
            (top + bottom) / 2.0,
            self.y_label,
            (LEFT + RIGHT) / 2.0,
            bottom + 32.0,
            self.x_label
        );
        for (at, label) in &self.x_ticks {
            let x = LEFT + (RIGHT - LEFT) * at;
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{bottom}\" y2=\"{0}\" stroke=\"black\"/>\
                 <text x=\"{x:.1}\" y=\"{1}\" font-size=\"10\" text-anchor=\"middle\">{label}</text>",
                bottom + 4.0,
                bottom + 15.0
            );
        }
        let empty = match &self.content {
            Content::Line { values, .. } => values.is_empty(),
            Content::Bars { completed, .. } => completed.is_empty(),
        };
        if empty {
            let _ = write!(
                out,
                "<text x=\"{0:.1}\" y=\"{1:.1}\" font-size=\"12\" text-anchor=\"middle\">no requests complete in this scenario</text>",
                (LEFT + RIGHT) / 2.0,
                (top + bottom) / 2.0
            );
        }
        match &self.content {
            Content::Line { colour, values } => {
                let last = values.len().max(2) - 1;
                let points: Vec<String> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{:.1},{:.1}", LEFT + (RIGHT - LEFT) * i as f64 / last as f64, y(*v)))
                    .collect();
                let _ = write!(
                    out,
                    "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2.5\" points=\"{}\"/>",
                    points.join(" ")
                );
            }
            Content::Bars { completed, failed } => {
                let slot = (RIGHT - LEFT) / completed.len().max(1) as f64;
                for (i, ok) in completed.iter().enumerate() {
                    let x = LEFT + slot * i as f64 + slot * 0.1;
                    let w = slot * 0.8;
                    let mut below = 0.0;
                    let layers = std::iter::once((COMPLETED, *ok)).chain(
                        failed
                            .iter()
                            .map(|(colour, per_sec)| (*colour, per_sec.get(i).copied().unwrap_or(0.0))),
                    );
                    for (colour, v) in layers {
                        let (low, high) = (y(below), y(below + v));
                        below += v;
                        let _ = write!(
                            out,
                            "<rect x=\"{x:.1}\" y=\"{high:.1}\" width=\"{w:.1}\" height=\"{0:.1}\" fill=\"{colour}\"/>",
                            low - high
                        );
                    }
                }
            }
        }
        // The legend sits above the plot area, right-aligned, clear of the data.
        let mut right = RIGHT;
        for (name, colour) in self.legend.iter().rev() {
            let x = right - 26.0 - 6.5 * name.len() as f64;
            right = x - 12.0;
            let legend_y = top - 8.0;
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{swatch_y:.1}\" width=\"14\" height=\"8\" fill=\"{colour}\"/>\
                 <text x=\"{text_x:.1}\" y=\"{text_y:.1}\" font-size=\"11\">{name}</text>",
                swatch_y = legend_y - 8.0,
                text_x = x + 20.0,
                text_y = legend_y + 1.0,
            );
        }
    }
}

/// The error kinds of a run as stacked series, most frequent first (the first in red): three
/// kinds by name, the rest together.
fn error_series(r: &Report) -> Vec<(String, &'static str, Vec<f64>)> {
    let mut kinds: Vec<(&String, &Vec<u64>)> = r.errors_per_second.iter().collect();
    kinds.sort_by_key(|(_, per_sec)| std::cmp::Reverse(per_sec.iter().sum::<u64>()));
    let secs = r.timeline.len();
    let mut series: Vec<(String, &'static str, Vec<f64>)> = Vec::new();
    for (n, (kind, per_sec)) in kinds.into_iter().enumerate() {
        let values = (0..secs).map(|i| per_sec.get(i).copied().unwrap_or(0) as f64);
        match [ERRORS, MORE_ERRORS[0], MORE_ERRORS[1]].get(n) {
            Some(colour) => series.push((kind.clone(), colour, values.collect())),
            None if n == 3 => series.push(("other errors".into(), OTHER_ERRORS, values.collect())),
            None => {
                for (sum, v) in series[3].2.iter_mut().zip(values) {
                    *sum += v;
                }
            }
        }
    }
    series
}

/// The whole chart for a report.
pub(crate) fn svg(r: &Report) -> String {
    let latency: Vec<f64> = r.curve.iter().map(|c| c.1).collect();
    let last = r.curve.len().max(2) - 1;
    let top = Panel {
        top: 48.0,
        bottom: 200.0,
        y_max: nice(latency.iter().copied().fold(0.0, f64::max)),
        y_label: "latency (ms)",
        x_label: "percentile of requests",
        x_ticks: r
            .curve
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (i as f64 / last as f64, format!("p{p}")))
            .collect(),
        legend: vec![("latency".into(), LATENCY)],
        content: Content::Line {
            colour: LATENCY,
            values: latency,
        },
    };
    let completed: Vec<f64> = r.timeline.iter().map(|v| *v as f64).collect();
    let errors = error_series(r);
    let secs = r.timeline.len().max(1);
    let peak = (0..completed.len())
        .map(|i| completed[i] + errors.iter().map(|(_, _, v)| v[i]).sum::<f64>())
        .fold(0.0, f64::max);
    // Bar i covers second i: ticks at the seconds' boundaries.
    let ticks = (0..=4)
        .map(|q| {
            let at = f64::from(q) / 4.0;
            (at, number(secs as f64 * at))
        })
        .collect();
    let mut legend = vec![("completed".to_owned(), COMPLETED)];
    if errors.is_empty() {
        legend.push(("no errors".to_owned(), ERRORS));
    }
    legend.extend(errors.iter().map(|(name, colour, _)| (name.clone(), *colour)));
    let bottom = Panel {
        top: 268.0,
        bottom: HEIGHT - 48.0,
        y_max: nice(peak),
        y_label: "requests per second",
        x_label: "time since the measured period began (s)",
        x_ticks: ticks,
        legend,
        content: Content::Bars {
            completed,
            failed: errors.into_iter().map(|(_, colour, v)| (colour, v)).collect(),
        },
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{LEFT}\" y=\"24\" font-size=\"14\">{}: {} attempted, {} accepted, {} errors, p99 {:.2} ms</text>",
        r.title(),
        r.attempted,
        r.accepted,
        r.errors,
        r.p99_ms()
    );
    top.draw(&mut out);
    bottom.draw(&mut out);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_scales() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(3.2), 5.0);
        assert_eq!(nice(5.0), 5.0);
        assert_eq!(nice(11.0), 20.0);
        assert_eq!(nice(0.042), 0.05);
        assert_eq!(nice(730.0), 1000.0);
        assert_eq!(
            (number(3.75), number(2.5), number(0.0), number(1250.0)),
            ("3.75".into(), "2.5".into(), "0".into(), "1250".into())
        );
    }
}
