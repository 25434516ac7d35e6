//! `GET /openapi.json`: the HTTP API described for people and tools.

use axum::Json;

use crate::domain::{DeliveryState, JobStatus};

pub async fn document() -> Json<serde_json::Value> {
    Json(spec())
}

pub fn spec() -> serde_json::Value {
    let error = serde_json::json!({"$ref": "#/components/schemas/Error"});
    // the vocabulary of the domain, as the status API answers it
    let statuses: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
    let mut delivery_states: Vec<serde_json::Value> = DeliveryState::ALL
        .iter()
        .map(|s| serde_json::json!(s.as_str()))
        .collect();
    delivery_states.push(serde_json::Value::Null);
    let error_response = |description: &str| serde_json::json!({"description": description, "content": {"application/json": {"schema": error}}});
    let stored = serde_json::json!({
        "description": "stored (status: applied, pending, stored; received: stored under load, applied within moments) or seen before (duplicate)",
        "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string", "enum": ["applied", "pending", "stored", "received", "duplicate"]}}}}}
    });
    serde_json::json!({
        "openapi": "3.1.0",
        "info": {
            "title": "leadrelay",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable, tracked follow-up email and SMS for landing-page leads."
        },
        "paths": {
            "/webhooks/resend": {"post": {
                "summary": "Resend webhook events, verified by their Svix signature",
                "parameters": [
                    {"name": "svix-id", "in": "header", "required": true, "schema": {"type": "string"}},
                    {"name": "svix-timestamp", "in": "header", "required": true, "schema": {"type": "string"}},
                    {"name": "svix-signature", "in": "header", "required": true, "schema": {"type": "string"}}
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": stored,
                    "400": error_response("missing header or malformed body"),
                    "401": error_response("bad signature, or timestamp more than 5 minutes from now"),
                    "413": {"description": "body larger than 256 KiB"},
                    "422": error_response("the event holds data the database cannot store"),
                    "503": error_response("not stored; deliver again later")
                }
            }},
            "/webhooks/mobizon": {"post": {
                "summary": "Mobizon delivery reports (sms-delivery-report)",
                "parameters": [{"name": "token", "in": "query", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": stored,
                    "400": error_response("malformed body"),
                    "401": error_response("missing or wrong token"),
                    "413": {"description": "body larger than 256 KiB"},
                    "422": error_response("the event holds data the database cannot store"),
                    "503": error_response("not stored; deliver again later")
                }
            }},
            "/webhooks/mobizon/{token}": {"post": {
                "summary": "The same, with the token in the path",
                "parameters": [{"name": "token", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": stored, "401": error_response("wrong token")}
            }},
            "/leads/{id}/status": {"get": {
                "summary": "One lead's messages and delivery states",
                "security": [{"bearer": []}],
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "responses": {
                    "200": {"description": "the lead and its messages", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/LeadStatus"}}}},
                    "400": error_response("the id is not a UUID"),
                    "401": error_response("missing or wrong token"),
                    "404": error_response("no such lead"),
                    "429": error_response("too many wrong tries of the token from this address (or overall): wait as Retry-After says; the token is not checked meanwhile")
                }
            }},
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "readiness: database reachable and listener connected", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready, with the reason"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "LeadStatus": {"type": "object", "properties": {
                    "lead": {"type": "object", "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "name": {"type": ["string", "null"]},
                        "email": {"type": ["string", "null"], "description": "masked"},
                        "phone": {"type": ["string", "null"], "description": "masked"},
                        "source": {"type": ["string", "null"]},
                        "created_at": {"type": "string", "format": "date-time"}
                    }},
                    "messages": {"type": "array", "items": {"type": "object", "properties": {
                        "channel": {"type": "string", "enum": ["email", "sms", "lead_tracking"]},
                        "template": {"type": "string"},
                        "status": {"type": "string", "enum": statuses},
                        "attempts": {"type": "integer"},
                        "max_attempts": {"type": "integer"},
                        "due_at": {"type": "string", "format": "date-time"},
                        "sent_at": {"type": ["string", "null"], "format": "date-time"},
                        "delivery_status": {"type": ["string", "null"], "enum": delivery_states},
                        "delivery_status_at": {"type": ["string", "null"], "format": "date-time"},
                        "error": {"type": ["string", "null"]},
                        "provider_message_id": {"type": ["string", "null"]},
                        "held_until": {"type": ["string", "null"], "format": "date-time", "description": "while a send window holds the message: when it opens"},
                        "hold_reason": {"type": ["string", "null"], "description": "why it was last moved to a window's opening"},
                        "cancelled_by": {"type": ["string", "null"], "enum": ["duplicate", "recipient_cap", "suppressed", null], "description": "the delivery policy or the suppression list that cancelled it before any request (reason in error)"},
                        "duplicate_of_lead": {"type": ["string", "null"], "format": "uuid", "description": "for a duplicate: the lead that already got this message"},
                        "reconciled_at": {"type": ["string", "null"], "format": "date-time", "description": "when leadrelay reconcile found this message at the provider (sent by the system before leadrelay); null for every message leadrelay sent"}
                    }}}
                }}
            }
        }
    })
}
