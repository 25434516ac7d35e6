-- Forgetting a person: one call, run as its owner, for the CLI and the
-- console (20261212090000).

create or replace function public.leadrelay_forget(
  p_leads uuid[], p_lead_rows boolean, p_actor text, p_session_id bigint, p_client_addr text,
  out cancelled integer, out jobs integer, out events integer, out suppressions integer,
  out audit_notes integer, out lead_rows integer, out audit_id bigint)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_erased constant text := 'erased: the person asked to be forgotten';
  v_jobs bigint[];
  v_waiting integer;
begin
  update public.notification_jobs
     set status = 'cancelled', finished_at = now(), last_error = 'cancelled: the person asked to be forgotten',
         locked_by = null, locked_until = null, updated_at = now()
   where lead_id = any(p_leads) and status in ('scheduled', 'due');
  get diagnostics cancelled = row_count;

  -- the suppressions first: their hash is found through the leads' contacts
  update public.notification_suppressions s
     set recipient = null, note = null, lift_reason = case when s.lift_reason is not null then v_erased end
   where s.lead_id = any(p_leads)
      or s.recipient_hash in (
           select leadrelay.recipient_hash('email', leadrelay.recipient('email', l.email, null))
             from public.landing_leads l where l.id = any(p_leads)
           union all
           select leadrelay.recipient_hash('sms', leadrelay.recipient('sms', null, l.phone))
             from public.landing_leads l where l.id = any(p_leads));
  get diagnostics suppressions = row_count;

  update public.notification_events e
     set payload = jsonb_build_object('erased', true)
   where e.job_id in (select j.id from public.notification_jobs j where j.lead_id = any(p_leads))
      or (e.job_id is null and e.provider_message_id in (
            select j.provider_message_id from public.notification_jobs j
             where j.lead_id = any(p_leads) and j.provider_message_id is not null));
  get diagnostics events = row_count;
  -- and those answered but not applied yet (20261215090000)
  update public.notification_event_inbox b
     set payload = jsonb_build_object('erased', true)
   where b.provider_message_id in (
           select j.provider_message_id from public.notification_jobs j
            where j.lead_id = any(p_leads) and j.provider_message_id is not null);
  get diagnostics v_waiting = row_count;
  events := events + v_waiting;

  with erased as (
    update public.notification_jobs j
       set recipient = null, sent_params = null,
           last_error = case when j.last_error is not null then v_erased end,
           sent_unconfirmed = case when j.sent_unconfirmed is not null then v_erased end,
           hold_reason = case when j.hold_reason is not null then v_erased end,
           errors = coalesce((select jsonb_agg(case jsonb_typeof(e)
                                                 when 'object' then (e - 'error') || jsonb_build_object('error', v_erased)
                                                 else jsonb_build_object('error', v_erased) end)
                                from jsonb_array_elements(case jsonb_typeof(j.errors) when 'array' then j.errors
                                                               else '[]'::jsonb end) e), '[]'::jsonb),
           updated_at = now()
     where j.lead_id = any(p_leads)
    returning j.id
  )
  select coalesce(array_agg(id), '{}') into v_jobs from erased;
  jobs := cardinality(v_jobs);

  update public.ops_audit set reason = v_erased
   where lead_ids && p_leads and reason is not null;
  get diagnostics audit_notes = row_count;

  update public.landing_leads
     set email_error = case when email_error is not null then v_erased end,
         sms_error = case when sms_error is not null then v_erased end
   where id = any(p_leads) and (email_error is not null or sms_error is not null);

  lead_rows := 0;
  if p_lead_rows then
    update public.landing_leads
       set name = null, email = null, phone = null, metadata = null
     where id = any(p_leads);
    get diagnostics lead_rows = row_count;
  end if;

  insert into public.ops_audit (session_id, actor, action, job_ids, changed_job_ids, lead_ids, reason, client_addr)
  values (p_session_id, left(p_actor, 200), 'forget', v_jobs, v_jobs, p_leads, 'a person was forgotten', left(p_client_addr, 64))
  returning id into audit_id;
end
$$;
