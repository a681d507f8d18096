//! The chart of a load run (`nebengjek load --report`): commands/s on top, ack p50 and
//! p99 below, one point per second of the run, the measuring window shaded. Plain SVG
//! written by hand: two line charts need no plotting library, and the file opens in
//! any browser.

use std::fmt::Write as _;

use sim::Sample;

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

/// One plotted series.
struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    values: Vec<(f64, f64)>,
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
pub fn nice_max(max: f64) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * magnitude)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Maps a data point of a panel to its pixel position.
struct Panel {
    top: f64,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn x(&self, t: f64) -> f64 {
        LEFT + (t / self.x_max) * (WIDTH - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        self.top + PANEL_HEIGHT - (v / self.y_max).clamp(0.0, 1.0) * PANEL_HEIGHT
    }
}

fn panel(
    out: &mut String,
    p: &Panel,
    title: &str,
    unit: &str,
    series: &[Series<'_>],
    window: Option<(f64, f64)>,
) {
    let right = WIDTH - RIGHT;
    if let Some((from, to)) = window {
        let _ = writeln!(
            out,
            r##"<rect class="window" x="{:.1}" y="{:.1}" width="{:.1}" height="{PANEL_HEIGHT:.1}" fill="#eef4ff"/>"##,
            p.x(from),
            p.top,
            (p.x(to) - p.x(from)).max(0.0)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{LEFT:.1}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
        p.top - 10.0,
        escape(title)
    );
    for i in 0..=4 {
        let v = p.y_max * f64::from(i) / 4.0;
        let y = p.y(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{} {unit}</text>"##,
            LEFT - 6.0,
            y + 4.0,
            trim(v)
        );
    }
    let ticks = 10;
    for i in 0..=ticks {
        let t = p.x_max * f64::from(i) / f64::from(ticks);
        let x = p.x(t);
        let bottom = p.top + PANEL_HEIGHT;
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{} s</text>"##,
            bottom + 4.0,
            bottom + 16.0,
            trim(t)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT:.1}" y="{:.1}" width="{:.1}" height="{PANEL_HEIGHT:.1}" fill="none" stroke="#666"/>"##,
        p.top,
        WIDTH - LEFT - RIGHT
    );
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .values
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", p.x(*t), p.y(*v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline class="series" data-name="{}" fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            escape(s.name),
            s.colour,
            points.join(" ")
        );
        let lx = right - 150.0 + 75.0 * i as f64 - 75.0 * (series.len() as f64 - 1.0);
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            lx + 18.0,
            s.colour,
            lx + 22.0,
            p.top - 6.0,
            escape(s.name),
            y = p.top - 10.0,
        );
    }
}

fn trim(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The SVG document for a run's `timeline`. `window` is the measuring window in
/// seconds since the start, shaded on both panels.
pub fn load_chart(title: &str, timeline: &[Sample], window: Option<(f64, f64)>) -> String {
    let x_max = nice_max(timeline.iter().map(|s| s.t_s).fold(0.0, f64::max));
    let rate = Series {
        name: "commands/s",
        colour: "#1f77b4",
        values: timeline.iter().map(|s| (s.t_s, s.commands_per_s)).collect(),
    };
    // A second without acks has no latency: leave it out rather than draw a zero.
    let latency = |name, colour, f: fn(&Sample) -> f64| Series {
        name,
        colour,
        values: timeline
            .iter()
            .filter(|s| s.acks > 0)
            .map(|s| (s.t_s, f(s)))
            .collect(),
    };
    let p50 = latency("ack p50", "#2ca02c", |s| s.ack_p50_ms);
    let p99 = latency("ack p99", "#d62728", |s| s.ack_p99_ms);
    let rates = Panel {
        top: TOP,
        x_max,
        y_max: nice_max(rate.values.iter().map(|v| v.1).fold(0.0, f64::max)),
    };
    let acks = Panel {
        top: TOP + PANEL_HEIGHT + GAP,
        x_max,
        y_max: nice_max(
            p99.values
                .iter()
                .chain(&p50.values)
                .map(|v| v.1)
                .fold(0.0, f64::max),
        ),
    };
    let height = TOP + 2.0 * PANEL_HEIGHT + GAP + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0}" height="{height:.0}" viewBox="0 0 {WIDTH:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, "<title>{}</title>", escape(title));
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="18" font-size="15" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    panel(&mut out, &rates, "Commands sent per second", "", &[rate], window);
    panel(
        &mut out,
        &acks,
        "Ack latency of each second (client: frame written to ack read)",
        "ms",
        &[p50, p99],
        window,
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rate: f64, p50: f64, p99: f64, acks: u64) -> Sample {
        Sample {
            t_s,
            commands_per_s: rate,
            acks,
            ack_p50_ms: p50,
            ack_p99_ms: p99,
            clients: 1,
            phase: "window",
        }
    }

    /// The points of the polyline named `name`.
    fn points(svg: &str, name: &str) -> Vec<(f64, f64)> {
        let marker = format!(r#"data-name="{name}""#);
        let line = svg.lines().find(|l| l.contains(&marker)).expect(name);
        let points = line
            .split(r#"points=""#)
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        points
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(12.0), 20.0);
        assert_eq!(nice_max(1653.0), 2000.0);
        assert_eq!(nice_max(0.3), 0.5);
        assert_eq!(nice_max(50.0), 50.0);
    }

    #[test]
    fn each_second_is_a_point_higher_values_higher_up() {
        let timeline = vec![
            sample(1.0, 100.0, 2.0, 10.0, 90),
            sample(2.0, 400.0, 3.0, 40.0, 380),
            sample(3.0, 0.0, 0.0, 0.0, 0),
            sample(4.0, 200.0, 2.5, 20.0, 210),
        ];
        let svg = load_chart("run <1>", &timeline, Some((1.0, 3.0)));
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("run &lt;1&gt;"), "the title is escaped");
        assert_eq!(svg.matches("class=\"window\"").count(), 2);
        let rate = points(&svg, "commands/s");
        assert_eq!(rate.len(), 4);
        // x grows with time; y is smaller (higher up) for larger values.
        assert!(rate.windows(2).all(|w| w[0].0 < w[1].0), "{rate:?}");
        assert!(
            rate[1].1 < rate[3].1 && rate[3].1 < rate[0].1 && rate[0].1 < rate[2].1,
            "{rate:?}"
        );
        // The top of the axis (500, the nice max of 400) is the panel's top edge.
        assert!((rate[1].1 - (TOP + PANEL_HEIGHT * (1.0 - 400.0 / 500.0))).abs() < 0.1);
        // The second without acks has no latency point.
        let p99 = points(&svg, "ack p99");
        let p50 = points(&svg, "ack p50");
        assert_eq!((p99.len(), p50.len()), (3, 3));
        assert!(p99.iter().zip(&p50).all(|(a, b)| a.1 < b.1), "p99 above p50");
    }

    #[test]
    fn an_empty_run_still_draws() {
        let svg = load_chart("empty", &[], None);
        assert!(svg.contains("</svg>"));
        assert!(points(&svg, "commands/s").is_empty());
    }
}
