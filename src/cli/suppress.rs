//! `leadrelay suppress` and `unsuppress`: an operator puts an address or a
//! phone on the suppression list (a reason required), or lifts it; both
//! audited as `cli:<user>`, with the console's statements
//! (`store::suppressions`). A lifted suppression sends nothing that was
//! cancelled meanwhile: `leadrelay retry` does, as for any cancelled job.

use tokio_postgres::Client;

use super::ops::OpsError;
use crate::domain::Channel;
use crate::store::operator::Actor;
use crate::store::suppressions::{self, SuppressError};

/// Which recipient: exactly one of an email or a phone.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Recipient {
    /// An email address, as typed.
    #[arg(long)]
    pub email: Option<String>,
    /// A phone number, typed any way (+7 (705) 123-45-67, 8 705 …).
    #[arg(long)]
    pub phone: Option<String>,
}

impl Recipient {
    fn parts(&self) -> (Channel, &str) {
        match (&self.email, &self.phone) {
            (Some(email), _) => (Channel::Email, email.as_str()),
            (None, Some(phone)) => (Channel::Sms, phone.as_str()),
            // clap's group requires one of them
            (None, None) => (Channel::Email, ""),
        }
    }
}

fn reason_of(reason: &str) -> Result<&str, OpsError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(OpsError::Input(
            "--reason is required: say why, for the audit".into(),
        ));
    }
    if reason.chars().count() > 500 {
        return Err(OpsError::Input("--reason is at most 500 characters".into()));
    }
    Ok(reason)
}

fn from_suppress(e: SuppressError) -> OpsError {
    match e {
        SuppressError::Unusable(problem) => {
            OpsError::Input(format!("{problem}: nothing was changed"))
        }
        SuppressError::Db(text) => OpsError::Db(text),
    }
}

pub async fn suppress(client: &Client, who: &Recipient, reason: &str) -> Result<String, OpsError> {
    let reason = reason_of(reason)?;
    let (channel, recipient) = who.parts();
    let in_force = suppressions::suppress(client, channel, recipient, reason, &Actor::cli(), None)
        .await
        .map_err(from_suppress)?;
    let what = channel_words(channel);
    Ok(if in_force.new {
        format!(
            "suppressed: no {what} goes to this recipient until `leadrelay unsuppress` lifts it\n"
        )
    } else {
        format!(
            "already suppressed since {} ({}): nothing changed but the audit\n",
            in_force.since.format("%Y-%m-%d %H:%M UTC"),
            in_force.reason
        )
    })
}

pub async fn unsuppress(
    client: &Client,
    who: &Recipient,
    reason: &str,
) -> Result<String, OpsError> {
    let reason = reason_of(reason)?;
    let (channel, recipient) = who.parts();
    let lifted = suppressions::lift(client, channel, recipient, reason, &Actor::cli())
        .await
        .map_err(from_suppress)?;
    Ok(match lifted {
        Some(was) => format!(
            "lifted (it was {was}): new {} to this recipient go again; what was cancelled stays cancelled (`leadrelay retry JOB` sends it)\n",
            channel_words(channel)
        ),
        None => "this recipient is not suppressed: nothing was changed\n".into(),
    })
}

fn channel_words(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "email",
        _ => "SMS",
    }
}
