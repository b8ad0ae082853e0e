//! Charts of benchmark results with plotters: SVG (for the UI, and files)
//! and PNG (files), text in an embedded font so nothing depends on the
//! fonts a machine has. Each is drawn for the size it is seen at: the SVG
//! is 420x280, so its text is 10-16 px in the dashboard's 330-520 px
//! charts (12 or more at 400); the PNG is 1200x800 with text that reads at
//! that size.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::bench::report::BenchResult;

const FONT: &str = "sans-serif";

/// The size a chart is drawn at and how big its text and lines are there.
#[derive(Clone, Copy)]
struct Look {
    w: u32,
    h: u32,
    /// Lines and marks, against the SVG's 420 units of width.
    line: f64,
    /// Text, against the SVG's.
    text: f64,
}

impl Look {
    /// The dashboard shows the SVG 330-520 px wide: a 16 px font (plotters
    /// writes 0.81 of it) is 10-16 px there (at 1200 units it was 4-7).
    const SVG: Look = Look {
        w: 420,
        h: 280,
        line: 1.0,
        text: 1.0,
    };
    /// A file seen at its own size: text a little larger than a page's.
    const PNG: Look = Look {
        w: 1200,
        h: 800,
        line: 2.85,
        text: 1.5,
    };

    /// A font size, from its size in the SVG.
    fn font(&self, size: f64) -> (&'static str, f64) {
        (FONT, size * self.text)
    }

    /// A length of lines and marks, from its length in the SVG.
    fn px(&self, v: f64) -> u32 {
        (v * self.line).round().max(1.0) as u32
    }

    /// A length that holds text (axis label areas).
    fn text_px(&self, v: f64) -> u32 {
        (v * self.text).round() as u32
    }
}

static FONT_ONCE: Once = Once::new();

fn register_font() {
    FONT_ONCE.call_once(|| {
        // DejaVu Sans (free licence, see assets/fonts/DejaVuSans-LICENSE.txt).
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../assets/fonts/DejaVuSans.ttf"),
        );
    });
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    /// Text drawn next to each point (e.g. efficiency).
    pub labels: Vec<String>,
}

pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// The x quantity is a count (concurrency, workers): whole-number ticks.
    pub x_integer: bool,
    pub series: Vec<Series>,
}

/// One data point as drawn: its position in the SVG (viewBox units) and its
/// exact value as text, so a display can show it on hover.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub label: String,
    pub series: String,
}

/// A chart drawn: the same SVG the CLI writes to a file, plus its points.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rendered {
    /// File stem: `throughput`, `latency`, `ttft_tpot`, `share`, `scaling`,
    /// `capacity_ttft`, `capacity_tps`.
    pub name: String,
    pub title: String,
    pub svg: String,
    pub points: Vec<Point>,
}

pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub bars: Vec<(String, f64)>,
}

type DrawResult<T, DB> = Result<T, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    c: &LineChart,
    k: Look,
) -> DrawResult<Vec<Point>, DB> {
    area.fill(&WHITE)?;
    let pts = c.series.iter().flat_map(|s| s.points.iter());
    let x_max = pts.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = pts.map(|p| p.1).fold(0.0, f64::max).max(1e-9);
    // Headroom for the legend, so it never sits on the data.
    // The legend's height (a line of text per series and its padding)
    // over the plot's (the area less caption, margins and x labels).
    let legend = (c.series.len() as f64 * 20.0 + 16.0) * k.text;
    let plot = f64::from(k.h) - (19.0 * 1.3 + 40.0) * k.text - 16.0 * k.line;
    let y_top = y_max * 1.08 / (1.0 - (legend / plot).min(0.6));
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, k.font(19.0))
        .margin(k.px(8.0))
        .x_label_area_size(k.text_px(40.0))
        .y_label_area_size(k.text_px(56.0))
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_top)?;
    let whole = |x: &f64| {
        if x.fract().abs() < 1e-9 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    let any = |x: &f64| format!("{x}");
    let x_fmt: &dyn Fn(&f64) -> String = if c.x_integer { &whole } else { &any };
    chart
        .configure_mesh()
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        // Counts get one tick per whole number (up to 10 of them); fewer
        // ticks than plotters' default, so the larger text fits.
        .x_labels(if c.x_integer {
            (x_max.ceil() as usize + 1).min(10)
        } else {
            6
        })
        .y_labels(6)
        .x_label_formatter(x_fmt)
        .label_style(k.font(16.0))
        .axis_desc_style(k.font(16.0))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    let mut points = Vec::new();
    for s in &c.series {
        for &(x, y) in &s.points {
            let (px, py) = chart.backend_coord(&(x, y));
            let xs = if c.x_integer {
                format!("{x:.0}")
            } else {
                format!("{x:.3}")
            };
            points.push(Point {
                x: f64::from(px),
                y: f64::from(py),
                label: format!(
                    "{}: {} {xs}, {} {}",
                    s.name,
                    c.x_label,
                    c.y_label,
                    fmt_value(y)
                ),
                series: s.name.clone(),
            });
        }
    }
    for (i, s) in c.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = ShapeStyle::from(&color).stroke_width(k.px(1.6));
        let key = k.px(20.0) as i32;
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(
                    s.points.iter().copied(),
                    k.px(6.0),
                    k.px(5.0),
                    style,
                ))?
                .label(&s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + key, y)], style));
        } else {
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))?
                .label(&s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + key, y)], style));
            chart.draw_series(
                s.points
                    .iter()
                    .map(|p| Circle::new(*p, k.px(3.0), color.filled())),
            )?;
        }
        for (p, text) in s.points.iter().zip(&s.labels) {
            chart.draw_series(std::iter::once(Text::new(
                text.clone(),
                (p.0, p.1 + y_top * 0.06),
                k.font(16.0).into_font().color(&color),
            )))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        // Room for the key's line before its text.
        .legend_area_size(k.px(28.0))
        .label_font(k.font(16.0))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    area.present()?;
    Ok(points)
}

/// A value with sensible precision for a tooltip.
fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    c: &BarChart,
    k: Look,
) -> DrawResult<Vec<Point>, DB> {
    area.fill(&WHITE)?;
    let n = c.bars.len().max(1) as u32;
    let y_max = c.bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0) * 1.2;
    let names: Vec<String> = c.bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, k.font(19.0))
        .margin(k.px(8.0))
        .x_label_area_size(k.text_px(40.0))
        .y_label_area_size(k.text_px(56.0))
        // A segmented range includes its end: n bars need 0..n-1.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n as usize)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("worker")
        .y_desc(&c.y_label)
        .y_labels(6)
        .label_style(k.font(16.0))
        .axis_desc_style(k.font(16.0))
        .draw()?;
    let mut points = Vec::new();
    for (i, (name, v)) in c.bars.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let i = i as u32;
        let (px, py) = chart.backend_coord(&(SegmentValue::CenterOf(i), *v));
        points.push(Point {
            x: f64::from(px),
            y: f64::from(py),
            label: format!("{name}: {v:.1}% of the load"),
            series: name.clone(),
        });
        chart.draw_series(
            Histogram::vertical(&chart)
                .style(color.filled())
                .margin(k.px(16.0))
                .data(std::iter::once((i, *v))),
        )?;
        // Centred over its bar, standing on it.
        let above =
            TextStyle::from(k.font(16.0).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(std::iter::once(Text::new(
            format!("{v:.1}%"),
            (SegmentValue::CenterOf(i), v + y_max * 0.01),
            above,
        )))?;
    }
    area.present()?;
    Ok(points)
}

pub(crate) enum Chart {
    Lines(LineChart),
    Bars(BarChart),
}

impl Chart {
    fn title(&self) -> &str {
        match self {
            Chart::Lines(c) => &c.title,
            Chart::Bars(c) => &c.title,
        }
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        k: Look,
    ) -> DrawResult<Vec<Point>, DB> {
        match self {
            Chart::Lines(c) => draw_lines(area, c, k),
            Chart::Bars(c) => draw_bars(area, c, k),
        }
    }

    /// The SVG text and the drawn points.
    fn svg(&self, name: &str) -> anyhow::Result<Rendered> {
        register_font();
        let mut svg = String::new();
        let points = {
            let k = Look::SVG;
            let area = SVGBackend::with_string(&mut svg, (k.w, k.h)).into_drawing_area();
            self.draw(&area, k)
                .map_err(|e| anyhow::anyhow!("drawing the {name} chart: {e:?}"))?
        };
        Ok(Rendered {
            name: name.to_string(),
            title: self.title().to_string(),
            svg,
            points,
        })
    }

    /// Drawn in memory and written with [`crate::files::write_atomic`]
    /// (plotters' own file output would follow a symlink planted there).
    fn png(&self, path: &Path) -> anyhow::Result<()> {
        register_font();
        let k = Look::PNG;
        let mut rgb = vec![0u8; (k.w * k.h * 3) as usize];
        {
            let area = BitMapBackend::with_buffer(&mut rgb, (k.w, k.h)).into_drawing_area();
            self.draw(&area, k)
                .map_err(|e| anyhow::anyhow!("drawing {}: {e:?}", path.display()))?;
        }
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, k.w, k.h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header()?.write_image_data(&rgb)?;
        }
        crate::files::write_atomic(path, &out)?;
        Ok(())
    }
}

/// Every chart the runs support, as SVG with their points (the dashboard's
/// charts); `runs` are (label, result).
pub fn render_all(runs: &[(String, &BenchResult)]) -> anyhow::Result<Vec<Rendered>> {
    charts(runs).iter().map(|(c, name)| c.svg(name)).collect()
}

/// Write every chart the runs support into `dir` as SVG (the same text the
/// dashboard shows) and PNG; `runs` are (label, result).
pub fn write_all(runs: &[(String, &BenchResult)], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for (c, name) in charts(runs) {
        let svg = dir.join(format!("{name}.svg"));
        crate::files::write_atomic(&svg, c.svg(&name)?.svg.as_bytes())?;
        let png = dir.join(format!("{name}.png"));
        c.png(&png)?;
        out.extend([svg, png]);
    }
    Ok(out)
}

/// The charts the runs support, each defined once: (chart, file stem).
fn charts(runs: &[(String, &BenchResult)]) -> Vec<(Chart, String)> {
    let mut out = Vec::new();
    let with_levels: Vec<&(String, &BenchResult)> = runs
        .iter()
        .filter(|(_, r)| !r.concurrency_benchmark.is_empty())
        .collect();
    if !with_levels.is_empty() {
        let series = with_levels
            .iter()
            .map(|(name, r)| Series {
                name: name.clone(),
                points: r
                    .concurrency_benchmark
                    .iter()
                    .map(|l| (l.concurrency as f64, l.requests_per_second))
                    .collect(),
                dashed: false,
                labels: vec![],
            })
            .collect();
        out.push((
            Chart::Lines(LineChart {
                title: "Throughput vs concurrency".into(),
                x_label: "concurrent requests".into(),
                x_integer: true,
                y_label: "requests per second".into(),
                series,
            }),
            "throughput".to_string(),
        ));
        let mut series = Vec::new();
        for (name, r) in &with_levels {
            for (q, pick) in [("p50", 0usize), ("p95", 1), ("p99", 2)] {
                series.push(Series {
                    name: if with_levels.len() > 1 {
                        format!("{name} {q}")
                    } else {
                        q.to_string()
                    },
                    points: r
                        .concurrency_benchmark
                        .iter()
                        .map(|l| {
                            (
                                l.concurrency as f64,
                                [
                                    l.p50_response_time,
                                    l.p95_response_time,
                                    l.p99_response_time,
                                ][pick],
                            )
                        })
                        .collect(),
                    dashed: pick > 0,
                    labels: vec![],
                });
            }
        }
        out.push((
            Chart::Lines(LineChart {
                title: "Latency percentiles vs concurrency".into(),
                x_label: "concurrent requests".into(),
                x_integer: true,
                y_label: "end-to-end latency (s)".into(),
                series,
            }),
            "latency".to_string(),
        ));
        let mut series = Vec::new();
        for (name, r) in &with_levels {
            let prefix = if with_levels.len() > 1 {
                format!("{name} ")
            } else {
                String::new()
            };
            series.push(Series {
                name: format!("{prefix}TTFT"),
                points: r
                    .concurrency_benchmark
                    .iter()
                    .map(|l| (l.concurrency as f64, l.ttft_avg * 1000.0))
                    .collect(),
                dashed: false,
                labels: vec![],
            });
            series.push(Series {
                name: format!("{prefix}TPOT"),
                points: r
                    .concurrency_benchmark
                    .iter()
                    .map(|l| (l.concurrency as f64, l.tpot_avg * 1000.0))
                    .collect(),
                dashed: true,
                labels: vec![],
            });
        }
        out.push((
            Chart::Lines(LineChart {
                title: "Time to first token and time per output token".into(),
                x_label: "concurrent requests".into(),
                x_integer: true,
                y_label: "milliseconds (average)".into(),
                series,
            }),
            "ttft_tpot".to_string(),
        ));
        // Share of load at the busiest level of the first run.
        let (name, r) = with_levels[0];
        if let Some(l) = r.concurrency_benchmark.iter().max_by_key(|l| l.concurrency)
            && !l.worker_stats.is_empty()
        {
            let bars = l
                .worker_stats
                .iter()
                .map(|(w, s)| (w.clone(), s.load_percentage))
                .collect();
            out.push((
                Chart::Bars(BarChart {
                    title: format!(
                        "Share of load per worker ({name}, concurrency {})",
                        l.concurrency
                    ),
                    y_label: "share of successful requests (%)".into(),
                    bars,
                }),
                "share".to_string(),
            ));
        }
    }
    let with_scaling: Vec<&(String, &BenchResult)> = runs
        .iter()
        .filter(|(_, r)| !r.worker_scaling_benchmark.is_empty())
        .collect();
    if !with_scaling.is_empty() {
        let max_n = with_scaling
            .iter()
            .flat_map(|(_, r)| r.worker_scaling_benchmark.iter().map(|s| s.workers))
            .max()
            .unwrap_or(1);
        // The ideal is what the studios give alone, summed (linear for
        // runs that did not measure them alone).
        let mut series = Vec::new();
        for (name, r) in &with_scaling {
            let rows = &r.worker_scaling_benchmark;
            if rows
                .iter()
                .all(|s| s.studios_alone_requests_per_second.is_some())
            {
                series.push(Series {
                    name: match with_scaling.len() {
                        1 => "ideal (the studios alone, summed)".into(),
                        _ => format!("{name} ideal"),
                    },
                    points: rows
                        .iter()
                        .map(|s| (s.workers as f64, s.ideal_speedup()))
                        .collect(),
                    dashed: true,
                    labels: vec![],
                });
            } else if !series.iter().any(|s| s.name == "ideal (linear)") {
                series.push(Series {
                    name: "ideal (linear)".into(),
                    points: (1..=max_n).map(|n| (n as f64, n as f64)).collect(),
                    dashed: true,
                    labels: vec![],
                });
            }
        }
        for (name, r) in &with_scaling {
            series.push(Series {
                name: format!("{name} speedup"),
                points: r
                    .worker_scaling_benchmark
                    .iter()
                    .map(|s| (s.workers as f64, s.speedup))
                    .collect(),
                dashed: false,
                labels: r
                    .worker_scaling_benchmark
                    .iter()
                    .map(|s| format!("{:.0}%", s.scaling_efficiency * 100.0))
                    .collect(),
            });
        }
        out.push((
            Chart::Lines(LineChart {
                title: "Speedup vs workers (labels: scaling efficiency)".into(),
                x_label: "workers".into(),
                x_integer: true,
                y_label: "speedup over one worker (x)".into(),
                series,
            }),
            "scaling".to_string(),
        ));
    }
    out.extend(crate::bench::capacity::chart::charts(runs));
    out
}
