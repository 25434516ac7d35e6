-- What a message is sent under: the email's idempotency key.
--
-- The current definitions, as the migrations leave them (see README in this
-- folder). Migrations stay the only thing applied to a database.

-- ---------------------------------------------------------------------------
-- The idempotency key an email is sent to Resend under: the lead's uuid and
-- the template (unique across databases), and, for a message that goes
-- again to a new address or as a new message, what makes it new.
-- ---------------------------------------------------------------------------
create or replace function leadrelay.idempotency_key(p_lead_id uuid, p_template text, p_variant text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select 'leadrelay-' || p_lead_id::text || '-' || p_template || coalesce('-' || p_variant, '')
$$;
