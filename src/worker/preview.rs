//! What a lead's messages are, or will be, exactly as they go: the version
//! and values a job's first claim fixed (or those a claim would fix now),
//! rendered by the same code as the worker's. `leadrelay preview` prints it;
//! the ops page shows it.

use crate::domain::Channel;
pub use crate::messages::templates::Message as Rendered;
use crate::messages::templates::{Compiled, EmailContent, Variables};
use crate::messages::unsubscribe::Links;
use crate::store::queue::QueueError;
use crate::store::templates;

/// One message of a lead.
#[derive(Debug, Clone)]
pub struct Preview {
    pub channel: Channel,
    pub template: String,
    pub version: Option<i32>,
    /// The job's status; None when the lead has no job for this template.
    pub status: Option<String>,
    pub rendered: Result<Rendered, String>,
}

/// `links`: the unsubscribe links' key and base, so that a preview shows
/// the link the message carries (None: `unsubscribe_url` is empty).
pub async fn lead(
    client: &tokio_postgres::Client,
    lead: uuid::Uuid,
    product_url: &str,
    template: Option<&str>,
    links: Option<&Links>,
) -> Result<Vec<Preview>, QueueError> {
    let mut previews = Vec::new();
    for row in templates::preview_rows(client, lead, product_url, template).await? {
        let rendered = match row.version {
            None => Err(format!(
                "no template {} for channel {}",
                row.template,
                row.channel.as_str()
            )),
            Some(version) => {
                match templates::load_version_with(client, &row.template, row.channel, version)
                    .await?
                {
                    None => Err(format!("version {version} no longer exists")),
                    Some(source) => {
                        let link = links.and_then(|l| l.for_params(lead, row.channel, &row.params));
                        render(source, &row.params, product_url, link)
                    }
                }
            }
        };
        previews.push(Preview {
            channel: row.channel,
            template: row.template,
            version: row.version,
            status: row.status,
            rendered,
        });
    }
    Ok(previews)
}

fn render(
    source: crate::domain::TemplateSource,
    params: &serde_json::Value,
    product_url: &str,
    unsubscribe_url: Option<String>,
) -> Result<Rendered, String> {
    Compiled::compile(source)
        .and_then(|compiled| {
            compiled.render_message(
                &Variables::from_sent_params(params, product_url)
                    .with_unsubscribe_url(unsubscribe_url),
            )
        })
        .map_err(|e| e.to_string())
}

impl Preview {
    /// As text, for the terminal.
    pub fn text(&self) -> String {
        let mut out = format!(
            "── {} {} v{} ({})\n",
            self.channel.as_str(),
            self.template,
            self.version.map_or("?".to_string(), |v| v.to_string()),
            self.status.as_deref().unwrap_or("no job yet")
        );
        match &self.rendered {
            Err(problem) => out.push_str(&format!("cannot render: {problem}\n")),
            Ok(Rendered::Sms { text, length }) => {
                out.push_str(&format!("{text}\n[{length}]\n"));
            }
            Ok(Rendered::Email(EmailContent::Inline {
                subject,
                html,
                text,
            })) => {
                out.push_str(&format!("Subject: {subject}\n\n"));
                match text {
                    Some(text) => out.push_str(text),
                    None => out.push_str("(no text part)\n"),
                }
                out.push_str(&format!("\n[HTML part: {} bytes]\n", html.len()));
            }
            Ok(Rendered::Email(EmailContent::Hosted {
                id,
                subject,
                variables,
            })) => {
                out.push_str(&format!(
                    "Resend template {id}{}\nvariables: {}\n",
                    subject
                        .as_ref()
                        .map(|s| format!(", subject {s:?}"))
                        .unwrap_or_default(),
                    variables
                        .iter()
                        .map(|(k, v)| format!("{k}={v:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        out
    }
}
