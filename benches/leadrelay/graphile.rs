//! graphile-worker 0.16, the same-run reference, installed from npm at run time.

use super::*;

pub(crate) struct Graphile {
    pub(crate) dir: PathBuf,
}

impl Graphile {
    pub(crate) fn install() -> Result<Graphile, String> {
        let dir = tempfile::Builder::new()
            .prefix("leadrelay-graphile-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/graphile");
        for file in ["package.json", "reference.mjs"] {
            std::fs::copy(source.join(file), dir.join(file)).map_err(|e| e.to_string())?;
        }
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("npm: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "npm install graphile-worker failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Graphile { dir })
    }

    pub(crate) fn run(&self, url: &str, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new("node")
            .arg("reference.mjs")
            .arg(url)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("node: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| {
                format!(
                    "graphile-worker {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("no output")
                )
            })
    }
}
