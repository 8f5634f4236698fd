//! Output: markdown tables on stdout, one CSV and one SVG plot per experiment, and the
//! `--check` that every configuration has its CSV row.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

/// Long-form results of one experiment: one row per configuration.
pub struct Csv {
    pub header: Vec<&'static str>,
    /// How many leading columns name the configuration.
    pub keys: usize,
    pub rows: Vec<Vec<String>>,
}

impl Csv {
    pub fn new(header: &[&'static str], keys: usize) -> Self {
        Self {
            header: header.to_vec(),
            keys,
            rows: Vec::new(),
        }
    }

    pub fn write(&self, path: &Path) {
        let mut s = self.header.join(",") + "\n";
        for r in &self.rows {
            s += &(r.join(",") + "\n");
        }
        std::fs::write(path, s).unwrap();
    }
}

/// Reads `path` back and checks that each of `expected` configuration keys (the first
/// `keys` columns, joined by commas) has exactly one row whose other cells are all
/// finite non-negative numbers. Returns the problems.
pub fn check(path: &Path, keys: usize, expected: &[String]) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![format!("{}: missing", path.display())];
    };
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let key = cells[..keys.min(cells.len())].join(",");
        if !seen.insert(key.clone()) {
            problems.push(format!("{}: duplicate row {key}", path.display()));
        }
        for c in &cells[keys.min(cells.len())..] {
            if !c.parse::<f64>().is_ok_and(|v| v.is_finite() && v >= 0.0) {
                problems.push(format!("{}: row {key}: bad value {c:?}", path.display()));
            }
        }
    }
    for e in expected {
        if !seen.contains(e) {
            problems.push(format!("{}: no row for {e}", path.display()));
        }
    }
    problems
}

/// A markdown table: `rows` by `cols`, cells filled by the caller.
pub struct Pivot {
    pub corner: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub cells: std::collections::HashMap<(String, String), String>,
}

impl Pivot {
    pub fn new(corner: &str) -> Self {
        Self {
            corner: corner.into(),
            rows: Vec::new(),
            cols: Vec::new(),
            cells: Default::default(),
        }
    }

    pub fn set(&mut self, row: &str, col: &str, v: String) {
        if !self.rows.iter().any(|r| r == row) {
            self.rows.push(row.into());
        }
        if !self.cols.iter().any(|c| c == col) {
            self.cols.push(col.into());
        }
        self.cells.insert((row.into(), col.into()), v);
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("| {} | {} |\n", self.corner, self.cols.join(" | "));
        s += &format!("|---|{}\n", "---:|".repeat(self.cols.len()));
        for r in &self.rows {
            let _ = write!(s, "| {r} |");
            for c in &self.cols {
                let v = self.cells.get(&(r.clone(), c.clone()));
                let _ = write!(s, " {} |", v.map_or("–", String::as_str));
            }
            s += "\n";
        }
        s
    }
}

/// One panel of a plot: named series of (x, y) points.
pub struct Panel {
    pub title: String,
    pub x_desc: &'static str,
    pub y_desc: &'static str,
    /// Plot x as log2 (message sizes).
    pub log_x: bool,
    /// Plot y as log10.
    pub log_y: bool,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Draws `panels` side by side into an SVG file.
pub fn plot(path: &Path, panels: &[Panel]) {
    let root = SVGBackend::new(path, (620 * panels.len() as u32, 460)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let areas = root.split_evenly((1, panels.len()));
    for (p, area) in panels.iter().zip(&areas) {
        let tx = |x: f64| if p.log_x { x.max(1.0).log2() } else { x };
        let ty = |y: f64| if p.log_y { y.max(1e-3).log10() } else { y };
        let pts: Vec<(f64, f64)> = p
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|&(x, y)| (tx(x), ty(y))))
            .collect();
        let (x0, x1) = bounds(pts.iter().map(|p| p.0));
        let (mut y0, y1) = bounds(pts.iter().map(|p| p.1));
        if !p.log_y {
            y0 = 0.0;
        }
        let pad = ((y1 - y0) * 0.08).max(0.1);
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(38)
            .y_label_area_size(62)
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), y0..y1 + pad)
            .unwrap();
        let xl = |v: &f64| {
            if p.log_x {
                human(2f64.powf(*v))
            } else {
                format!("{v}")
            }
        };
        let yl = |v: &f64| {
            if p.log_y {
                human(10f64.powf(*v))
            } else {
                human(*v)
            }
        };
        chart
            .configure_mesh()
            .x_desc(p.x_desc)
            .y_desc(p.y_desc)
            .x_label_formatter(&xl)
            .y_label_formatter(&yl)
            .draw()
            .unwrap();
        for (i, (name, v)) in p.series.iter().enumerate() {
            let style = Palette99::pick(i).stroke_width(2);
            let line: Vec<(f64, f64)> = v.iter().map(|&(x, y)| (tx(x), ty(y))).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), style))
                .unwrap()
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart
                .draw_series(line.into_iter().map(|c| Circle::new(c, 3, style.filled())))
                .unwrap();
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .unwrap();
    }
    root.present().unwrap();
}

fn bounds(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)))
}

/// 1536 -> "1.5K", 65536 -> "64K", 2.5e6 -> "2.5M".
pub fn human(v: f64) -> String {
    let (d, s) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1024.0 && (v / 1024.0).fract() == 0.0 {
        (1024.0, "K")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let x = v / d;
    if (x - x.round()).abs() < 0.05 {
        format!("{:.0}{s}", x.round())
    } else {
        format!("{x:.1}{s}")
    }
}
