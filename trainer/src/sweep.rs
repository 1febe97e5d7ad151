//! `trainer sweep`: one run per kept fraction, a dense reference, `results.csv`, and a plot of
//! test accuracy against the fraction of weights kept (SVG and PNG).

use std::path::Path;

use plotters::prelude::*;

use crate::config::{FitConfig, MethodKind};
use crate::error::{Error, Result};
use crate::train::{fit, FitOptions, Run};

/// One row of `results.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRow {
    /// Method id.
    pub method: String,
    /// Requested fraction kept.
    pub keep: f64,
    /// Fraction actually kept.
    pub density: f64,
    /// Final test accuracy.
    pub test_accuracy: f64,
    /// Mean seconds per epoch.
    pub seconds_per_epoch: f64,
    /// Run directory.
    pub run: String,
}

/// Trains (or finishes, or reuses) one run.
fn run_once(dir: &Path, cfg: FitConfig, quiet: bool) -> Result<SweepRow> {
    let done = Run::open(dir)
        .ok()
        .and_then(|r| r.metrics().ok())
        .is_some_and(|m| m.len() >= cfg.epochs);
    if !done {
        let resume = dir.join("checkpoint.safetensors").exists();
        fit(
            dir,
            cfg.clone(),
            FitOptions {
                resume,
                quiet,
                stop_after: None,
                profile: false,
            },
        )?;
    }
    let metrics = Run::open(dir)?.metrics()?;
    let last = metrics.last().ok_or_else(|| Error::data(dir, "run has no metrics"))?;
    Ok(SweepRow {
        method: cfg.method.id().into(),
        keep: cfg.keep,
        density: last.overall_density,
        test_accuracy: last.test_accuracy,
        seconds_per_epoch: metrics.iter().map(|m| m.seconds).sum::<f64>() / metrics.len() as f64,
        run: dir.display().to_string(),
    })
}

/// Runs `base` at every fraction in `keeps`, plus a dense run, under `out`; writes
/// `results.csv`, `sweep.svg` and `sweep.png`. Finished runs are reused, unfinished ones resumed.
pub fn sweep(out: &Path, base: &FitConfig, keeps: &[f64], quiet: bool) -> Result<Vec<SweepRow>> {
    if keeps.is_empty() {
        return Err(Error::Config("sweep needs at least one --keep value".into()));
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    for &keep in keeps {
        let cfg = FitConfig { keep, ..base.clone() };
        cfg.validate()?;
        rows.push(run_once(
            &out.join(format!("{}-keep-{keep}", base.method.id())),
            cfg,
            quiet,
        )?);
    }
    let dense_cfg = FitConfig {
        model: base.model.clone(),
        data: base.data.clone(),
        data_kind: base.data_kind,
        task: base.task.clone(),
        task_index: base.task_index,
        epochs: base.epochs,
        batch_size: base.batch_size,
        seed: base.seed,
        device: base.device.clone(),
        ..FitConfig::defaults(MethodKind::Dense)
    };
    let dense = run_once(&out.join("dense"), dense_cfg, quiet)?;
    let mut csv = String::from("method,keep,density,test_accuracy,seconds_per_epoch,run\n");
    for r in rows.iter().chain(std::iter::once(&dense)) {
        csv += &format!(
            "{},{},{:.6},{:.6},{:.3},{}\n",
            r.method, r.keep, r.density, r.test_accuracy, r.seconds_per_epoch, r.run
        );
    }
    let path = out.join("results.csv");
    smk_format::writer::write_atomic(&path, csv.as_bytes()).map_err(|source| Error::Io { path, source })?;
    let title = format!("{} on {}", base.method.id(), base.model);
    let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.density, 100.0 * r.test_accuracy)).collect();
    plot(out, &title, base.method.id(), &points, 100.0 * dense.test_accuracy)?;
    rows.push(dense);
    Ok(rows)
}

/// Registers a system font for plot text (plotters draws text with `ab_glyph`, from a font
/// file; none is bundled).
fn register_font() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ];
        for c in candidates {
            if let Ok(bytes) = std::fs::read(c) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    method: &str,
    points: &[(f64, f64)],
    dense: f64,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let lo = points.iter().map(|p| p.1).fold(dense, f64::min);
    let ymin = (lo - 5.0).floor().max(0.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..1.05f64, ymin..100.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("fraction of weights kept")
        .y_desc("test accuracy (%)")
        .draw()
        .map_err(e)?;
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(sorted.clone(), BLUE.stroke_width(2)))
        .map_err(e)?
        .label(method)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(sorted.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(vec![(0.0, dense), (1.05, dense)], RED.stroke_width(2)))
        .map_err(e)?
        .label("dense")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Writes `sweep.svg` and `sweep.png` in `dir`.
pub fn plot(dir: &Path, title: &str, method: &str, points: &[(f64, f64)], dense: f64) -> Result<()> {
    if !register_font() {
        eprintln!("warning: no system font found (DejaVuSans.ttf); skipping the plot, results.csv has the numbers");
        return Ok(());
    }
    let svg = dir.join("sweep.svg");
    draw(
        SVGBackend::new(&svg, (800, 500)).into_drawing_area(),
        title,
        method,
        points,
        dense,
    )
    .map_err(|m| Error::data(&svg, m))?;
    let png = dir.join("sweep.png");
    draw(
        BitMapBackend::new(&png, (800, 500)).into_drawing_area(),
        title,
        method,
        points,
        dense,
    )
    .map_err(|m| Error::data(&png, m))?;
    Ok(())
}
