//! What rendering a message from its template costs the worker: the seeded
//! proftest email and SMS, compiled once (as the worker caches them), rendered
//! from a job's fixed values.

use std::time::Instant;

use leadrelay::domain::Channel;
use leadrelay::messages::templates::{Compiled, Variables};
use tokio_postgres::Client;

use crate::table::Row;

pub(crate) async fn render_cost(client: &Client) -> Row {
    let compiled = |channel| async move {
        let source =
            leadrelay::store::templates::load_version_with(client, "proftest_result", channel, 1)
                .await
                .unwrap()
                .expect("the seeded template");
        Compiled::compile(source).unwrap()
    };
    let email = compiled(Channel::Email).await;
    let sms = compiled(Channel::Sms).await;
    let params = serde_json::json!({
        "name": "Айгерим", "email": "lead1@gmail.com", "phone": "+7 (705) 123-45-67",
        "source": "proftest_main", "created_at": "2026-11-29T10:00:00+00:00",
        "metadata": {"answers": [3, 1, 4, 1, 5], "utm_source": "instagram"},
        "params": {}, "max_sms_segments": 3, "product_url": "https://academy.kz/product",
    });
    let n = 20_000;
    let started = Instant::now();
    for _ in 0..n {
        let vars = Variables::from_sent_params(&params, "https://academy.kz/product");
        std::hint::black_box(email.render_email(&vars).unwrap());
        std::hint::black_box(sms.render_sms(&vars).unwrap());
    }
    let per_pair = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    Row {
        scenario: "rendering one email and one SMS".into(),
        measured: format!("{per_pair:.1} µs per lead (compiled once, {n} leads)"),
        reference: "—".into(),
        ratio: "—".into(),
        target: "rendering must not cost a query per job".into(),
    }
}
