//! Output of a bench: its typed result as one JSON object, a Markdown table and an SVG
//! plot of the latency distributions, written to `--out` and printed.

mod svg;
mod table;

use std::path::Path;

use serde::Serialize;

pub use svg::{cdf_svg, series_color, Series};
pub use table::{num, yes_no, Table};

use super::{BenchError, Common, Context};

/// Everything a bench produces.
#[derive(Debug)]
pub struct Output<'a, R: Serialize> {
    /// File stem: `placement`, `lifecycle`, ...
    pub name: &'static str,
    /// The typed result: `<name>.json` (printed with `--json`).
    pub result: &'a R,
    /// The Markdown report, made from the result (printed otherwise).
    pub markdown: String,
    /// The plot, if the bench has distributions.
    pub svg: Option<String>,
}

/// A result with the program's version beside its own fields.
#[derive(Serialize)]
struct Versioned<'a, R: Serialize> {
    version: &'a str,
    #[serde(flatten)]
    result: &'a R,
}

/// The JSON text of `result` with `version`. It goes through a [`serde_json::Value`],
/// whose objects keep their keys sorted, so that the files list every object's keys in
/// the same (alphabetical) order whatever the order of the struct's fields.
pub fn json_text(version: &str, result: &impl Serialize) -> Result<String, BenchError> {
    serde_json::to_value(Versioned { version, result })
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map_err(|e| BenchError::step("serialising the results", e))
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Output {
        path: path.into(),
        source,
    })
}

/// Writes `<out>/<name>.{json,md,svg}` and prints the JSON or the Markdown.
///
/// The directory is made absolute (against the current directory when given relative)
/// so that the line saying where the files went names them unambiguously.
pub fn emit<R: Serialize>(
    ctx: &Context,
    common: &Common,
    out: Output<'_, R>,
) -> Result<(), BenchError> {
    let dir = if common.out.is_absolute() {
        common.out.clone()
    } else {
        std::env::current_dir()
            .map_err(|source| BenchError::Output {
                path: common.out.clone(),
                source,
            })?
            .join(&common.out)
    };
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::Output {
        path: dir.clone(),
        source,
    })?;
    let json_text = json_text(ctx.version, out.result)?;
    let base = dir.join(out.name);
    write(&base.with_extension("json"), &format!("{json_text}\n"))?;
    write(&base.with_extension("md"), &out.markdown)?;
    let mut files = vec![base.with_extension("json"), base.with_extension("md")];
    if let Some(svg) = &out.svg {
        write(&base.with_extension("svg"), svg)?;
        files.push(base.with_extension("svg"));
    }
    if common.json {
        println!("{json_text}");
    } else {
        print!("{}", out.markdown);
    }
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    ctx.progress
        .status(&format!("bench: wrote {}", names.join(", ")));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct R {
        zeta: u32,
        alpha: Inner,
    }

    #[derive(Serialize)]
    struct Inner {
        b: Option<f64>,
        a: &'static str,
    }

    #[test]
    fn json_keys_come_out_sorted_with_the_version() {
        let r = R {
            zeta: 1,
            alpha: Inner { b: None, a: "x" },
        };
        let text = json_text("9.9.9", &r).unwrap();
        assert_eq!(
            text,
            "{\n  \"alpha\": {\n    \"a\": \"x\",\n    \"b\": null\n  },\n  \"version\": \"9.9.9\",\n  \"zeta\": 1\n}"
        );
    }
}
