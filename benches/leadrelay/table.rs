//! The table the benchmark prints: each figure beside its same-run reference.

pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) measured: String,
    pub(crate) reference: String,
    pub(crate) ratio: String,
    pub(crate) target: String,
}

pub(crate) fn row(
    scenario: &str,
    measured: String,
    reference: String,
    ratio: String,
    target: &str,
) -> Row {
    println!("{scenario}: {measured} | {reference} | {ratio} | target {target}");
    Row {
        scenario: scenario.into(),
        measured,
        reference,
        ratio,
        target: target.into(),
    }
}

pub(crate) fn print_table(rows: &[Row]) {
    let headers = [
        "scenario",
        "measured",
        "reference (same run)",
        "ratio",
        "target",
    ];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.as_str(),
                r.measured.as_str(),
                r.reference.as_str(),
                r.ratio.as_str(),
                r.target.as_str(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |c: [&str; 5]| {
        let parts: Vec<String> = c
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s}{}", " ".repeat(w - s.chars().count())))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    println!("{}", line(headers));
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for c in cells {
        println!("{}", line(c));
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// The reference and ratio cells for a figure graphile-worker also
/// measured: `describe` writes its figure, the ratio is `ours` over its `key`.
pub(crate) fn against(
    reference: &Result<serde_json::Value, String>,
    describe: impl Fn(&serde_json::Value) -> String,
    ours: f64,
    key: &str,
    suffix: &str,
) -> (String, String) {
    match reference {
        Ok(v) => (
            describe(v),
            format!("{:.2}x{suffix}", ours / v[key].as_f64().unwrap_or(f64::NAN)),
        ),
        Err(e) => (format!("graphile-worker not run: {e}"), "-".into()),
    }
}

pub(crate) fn row_against(
    scenario: &str,
    measured: String,
    cells: (String, String),
    target: &str,
) -> Row {
    row(scenario, measured, cells.0, cells.1, target)
}
