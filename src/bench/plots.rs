//! The bench's pictures (`--plots DIR`): throughput by mode, the latency CDF of each mode's
//! paced run, and how the CPU-bound plugin scales with a job's concurrency; SVG files drawn
//! with `plotters` (text is left to the viewer's fonts: no font files are read).

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::Row;

/// Draw every picture into `dir` (made if missing); `when` goes into the titles.
pub fn draw(dir: &Path, rows: &[Row], when: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let path = dir.join("throughput.svg");
    throughput(&path, rows, when).with_context(|| format!("drawing {}", path.display()))?;
    written.push(path);
    let path = dir.join("latency.svg");
    latency(&path, rows, when).with_context(|| format!("drawing {}", path.display()))?;
    written.push(path);
    let busy: Vec<&Row> = rows.iter().filter(|r| r.concurrency.is_some()).collect();
    if !busy.is_empty() {
        let path = dir.join("concurrency.svg");
        concurrency(&path, &busy, when).with_context(|| format!("drawing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Median events/s of each mode as a bar, the runs' range as a whisker, and the ratio to the
/// bare loop at the bar's end.
fn throughput(path: &Path, rows: &[Row], when: &str) -> anyhow::Result<()> {
    let height = 90 + 26 * rows.len() as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows
        .iter()
        .flat_map(|r| r.runs.iter().copied())
        .fold(1.0, f64::max)
        * 1.18;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("events/s by mode (median of the runs, whisker: min-max), {when}"),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(270)
        .build_cartesian_2d(0.0..top, (0..rows.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => rows
                .len()
                .checked_sub(i + 1)
                .and_then(|i| rows.get(i))
                .map_or(String::new(), |r| r.mode.to_string()),
            SegmentValue::Last => String::new(),
        })
        .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .x_desc("events/s")
        .label_style(("sans-serif", 13))
        .draw()?;
    // Drawn bottom-up: the table's first row on top.
    let at = |i: usize| rows.len() - 1 - i;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let i = at(i);
        let colour = if r.mode.starts_with("bare") {
            RGBColor(150, 150, 150)
        } else {
            RGBColor(52, 110, 180)
        };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (r.events_per_s, SegmentValue::Exact(i + 1)),
            ],
            colour.filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let i = at(i);
        let (lo, hi) = r
            .runs
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        PathElement::new(
            vec![
                (lo, SegmentValue::CenterOf(i)),
                (hi, SegmentValue::CenterOf(i)),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let i = at(i);
        let hi = r.runs.iter().copied().fold(r.events_per_s, f64::max);
        Text::new(
            format!(" {:.0}%", r.vs_bare * 100.0),
            (hi, SegmentValue::CenterOf(i)),
            TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// The modes drawn in the latency picture (all of them would be a tangle): the baselines,
/// the host's no-ops, echo and the Python plugin.
const LATENCY_MODES: [&str; 6] = ["bare", "bare-echo", "native", "wasm-noop", "echo", "python"];

/// Latency by percentile, as HdrHistogram draws it: the percentile axis stretched toward the
/// tail (1 / (1 - p), log scale), the latency on a log scale.
fn latency(path: &Path, rows: &[Row], when: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let drawn: Vec<&Row> = rows
        .iter()
        .filter(|r| LATENCY_MODES.contains(&r.key))
        .collect();
    let ms = drawn.iter().flat_map(|r| r.cdf.iter().map(|p| p.1));
    let (lo, hi) = ms.fold((f64::MAX, 0.1f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let stretch = |q: f64| 1.0 / (1.0 - q).max(1e-4);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("publish -> ack latency by percentile, at half of each mode's rate, {when}"),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(
            (1.0..stretch(0.9999)).log_scale(),
            (lo.clamp(0.01, 1.0) * 0.8..hi * 1.25).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms (log scale)")
        .x_label_formatter(&|v| {
            let p = 100.0 * (1.0 - 1.0 / v);
            match p {
                p if p < 0.5 => "0%".into(),
                p if p < 99.0 => format!("{p:.0}%"),
                p if p < 99.9 => format!("{p:.1}%"),
                p => format!("{p:.2}%"),
            }
        })
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, r) in drawn.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.cdf.iter().map(|(q, ms)| (stretch(*q), *ms)),
                colour.stroke_width(2),
            ))?
            .label(r.mode)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Events/s of the CPU-bound plugin by a job's concurrency, against perfect scaling from one.
fn concurrency(path: &Path, rows: &[&Row], when: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (720, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let points: Vec<(u32, f64)> = rows
        .iter()
        .filter_map(|r| r.concurrency.map(|n| (n, r.events_per_s)))
        .collect();
    let max_n = points.iter().map(|p| p.0).max().unwrap_or(1);
    let one = points
        .iter()
        .find(|p| p.0 == 1)
        .map_or(points.first().map_or(1.0, |p| p.1), |p| p.1);
    let top = (one * f64::from(max_n)).max(points.iter().map(|p| p.1).fold(0.0, f64::max)) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("busy plugin (~35 us of hashing per event) by concurrency, {when}"),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.5..f64::from(max_n) + 0.5, 0.0..top)?;
    chart
        .configure_mesh()
        .x_labels(max_n as usize)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .x_desc("plugin instances per job (concurrency)")
        .y_desc("events/s")
        .label_style(("sans-serif", 13))
        .draw()?;
    let ideal = RGBColor(150, 150, 150);
    chart
        .draw_series(LineSeries::new(
            (1..=max_n).map(|n| (f64::from(n), one * f64::from(n))),
            ideal.stroke_width(1),
        ))?
        .label("perfect scaling from one instance")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], ideal));
    let measured = RGBColor(52, 110, 180);
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|(n, v)| (f64::from(*n), *v)),
            measured.stroke_width(2),
        ))?
        .label("measured (2 cores, shared with Redis)")
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], measured.stroke_width(2))
        });
    chart.draw_series(
        points
            .iter()
            .map(|(n, v)| Circle::new((f64::from(*n), *v), 4, measured.filled())),
    )?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    root.present()?;
    Ok(())
}
