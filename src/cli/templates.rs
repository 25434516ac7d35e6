//! `leadrelay templates check` and `leadrelay preview`: the marketing team's
//! edits, checked and seen before they reach anyone.

use tokio_postgres::Client;
use uuid::Uuid;

use super::ops::{self, OpsError};
use crate::worker::{preview, template_check};

/// Prints one line per enabled rule; Err names how many cannot be sent.
pub async fn check(client: &Client, product_url: &str) -> Result<String, OpsError> {
    let findings = template_check::check(client, product_url)
        .await
        .map_err(|e| OpsError::Db(e.to_string()))?;
    let mut out = String::new();
    for fine in &findings.fine {
        out.push_str(&format!("ok    {fine}\n"));
    }
    for warning in &findings.warnings {
        out.push_str(&format!("warn  {warning}\n"));
    }
    for problem in &findings.problems {
        out.push_str(&format!("FAIL  {problem}\n"));
    }
    if findings.problems.is_empty() {
        out.push_str(&format!(
            "{} enabled rule(s); every template renders\n",
            findings.fine.len()
        ));
        Ok(out)
    } else {
        Err(OpsError::Input(format!(
            "{out}{} template problem(s): the jobs of these rules fail until they are fixed",
            findings.problems.len()
        )))
    }
}

/// The messages of the lead(s) `query` names, exactly as they go.
pub async fn preview(
    client: &Client,
    query: &str,
    template: Option<&str>,
    product_url: &str,
    links: Option<&crate::messages::unsubscribe::Links>,
) -> Result<String, OpsError> {
    let mut out = String::new();
    for lead in ops::find_leads(client, query).await? {
        let id: Uuid = lead.get(0);
        out.push_str(&format!("lead {id}\n"));
        let previews = preview::lead(client, id, product_url, template, links)
            .await
            .map_err(|e| OpsError::Db(e.to_string()))?;
        if previews.is_empty() {
            out.push_str(match template {
                Some(_) => "  no such template\n",
                None => "  no messages (give --template KEY to preview one)\n",
            });
        }
        for p in previews {
            out.push_str(&p.text());
        }
        out.push('\n');
    }
    Ok(out)
}
