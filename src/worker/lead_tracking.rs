//! The sales dashboard's `lead_tracking` table, possibly in another database
//! (`LEAD_TRACKING_DATABASE_URL`). We do not own that table and cannot rely on
//! a unique key in it, so the upsert finds the row by the landing lead id kept
//! in `metadata.landing_lead_id`, under a transaction-scoped advisory lock on
//! that id: two workers syncing the same lead take turns, and a lead gets one
//! row however often its job runs.

use deadpool_postgres::Pool;

use crate::store::describe;
use crate::store::queue::ClaimedJob;

/// The sales dashboard's table as it looks in the tracking project; `leadrelay
/// dev` creates it so the whole flow runs locally, and the tests use it.
pub const DASHBOARD_TABLE: &str = "
create table if not exists public.lead_tracking (
  id uuid primary key default gen_random_uuid(),
  full_name text, email text, phone text, source text, metadata jsonb,
  email_sent boolean default false, email_sent_at timestamptz,
  sms_sent boolean default false, sms_sent_at timestamptz,
  created_at timestamptz default now())";

const LOCK: &str = "select pg_advisory_xact_lock(hashtextextended($1, 0))";

/// Only the flags are updated on an existing row: people edit the rest.
/// They only move forward (a message once sent stays sent), so a slower,
/// superseded sync of the same lead can never write older flags over newer.
const UPDATE_FLAGS: &str = "
update public.lead_tracking
   set email_sent = coalesce(email_sent, false) or $2,
       email_sent_at = coalesce(email_sent_at, $3),
       sms_sent = coalesce(sms_sent, false) or $4,
       sms_sent_at = coalesce(sms_sent_at, $5)
 where metadata ->> 'landing_lead_id' = $1";

const INSERT_ROW: &str = "
insert into public.lead_tracking
  (full_name, email, phone, source, metadata, email_sent, email_sent_at, sms_sent, sms_sent_at, created_at)
values ($2, $3, $4, $5,
        (case when jsonb_typeof($6::jsonb) = 'object' then $6::jsonb
              when $6::jsonb is null then '{}'::jsonb
              else jsonb_build_object('landing_metadata', $6::jsonb) end)
          || jsonb_build_object('landing_lead_id', $1::text),
        $7, $8, $9, $10, $11)";

#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("lead_tracking database unavailable: {0}")]
    Pool(String),
    #[error("lead_tracking: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for TrackingError {
    fn from(e: tokio_postgres::Error) -> Self {
        TrackingError::Db(describe(&e))
    }
}

/// Upserts the lead's row; returns the sent flags written, so the job can
/// tell whether they changed meanwhile.
pub async fn sync(pool: &Pool, job: &ClaimedJob) -> Result<(bool, bool), TrackingError> {
    let Some(lead) = &job.lead else {
        return Ok((false, false));
    };
    let mut client = pool
        .get()
        .await
        .map_err(|e| TrackingError::Pool(e.to_string()))?;
    let tx = client.transaction().await?;
    let lead_id = job.lead_id.to_string();
    tx.execute(LOCK, &[&lead_id]).await?;
    let updated = tx
        .execute(
            UPDATE_FLAGS,
            &[
                &lead_id,
                &lead.email_sent,
                &lead.email_sent_at,
                &lead.sms_sent,
                &lead.sms_sent_at,
            ],
        )
        .await?;
    if updated == 0 {
        let full_name: Option<String> = lead.name.as_deref().map(|n| n.chars().take(200).collect());
        let email: Option<String> = lead
            .email
            .as_deref()
            .map(|e| e.trim().chars().take(320).collect());
        let phone: Option<String> = lead
            .phone
            .as_deref()
            .map(|p| p.trim().chars().take(64).collect());
        tx.execute(
            INSERT_ROW,
            &[
                &lead_id,
                &full_name,
                &email,
                &phone,
                &job.template,
                &lead.metadata,
                &lead.email_sent,
                &lead.email_sent_at,
                &lead.sms_sent,
                &lead.sms_sent_at,
                &lead.created_at,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok((lead.email_sent, lead.sms_sent))
}

impl crate::worker::Worker {
    pub(super) async fn sync_lead_tracking(&self, job: &ClaimedJob) {
        match sync(&self.tracking_pool, job).await {
            Ok((email_sent, sms_sent)) => {
                match self
                    .queue
                    .record_tracked(job.id, &job.lock, email_sent, sms_sent)
                    .await
                {
                    Ok(true) => tracing::info!(
                        lead_id = %job.lead_id, job_id = job.id, channel = "lead_tracking",
                        attempt = job.attempts, outcome = "sent", email_sent, sms_sent, "state change"
                    ),
                    Ok(false) => super::lease_lost(job),
                    Err(e) => {
                        tracing::warn!(job_id = job.id, error = %e, "could not record lead_tracking outcome")
                    }
                }
            }
            Err(e) => {
                let outcome = self.outcome_of(
                    job,
                    Err(crate::providers::SendError::temporary(e.to_string())),
                );
                self.record(job, outcome).await;
            }
        }
    }
}
