//! The HTTP server under a flood of connections that send nothing: the real
//! binary, with the file limit systemd's default would give it, keeps
//! answering `/readyz` and keeps sending, and closes the silent ones.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::{LEAD_TRACKING_TABLE, NO_DELAY, Providers, ServeProcess, count, eventually};
use crate::harness::{fresh_db, insert_proftest_lead};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn readyz(port: u16) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test]
async fn three_hundred_silent_connections_under_a_file_limit_of_256_leave_readyz_and_sending_working()
 {
    let db = fresh_db().await;
    let client = db.client().await;
    client.batch_execute(NO_DELAY).await.unwrap();
    client.batch_execute(LEAD_TRACKING_TABLE).await.unwrap();
    let providers = Providers::healthy().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut serve =
        ServeProcess::start_limited(&db.url, &providers, &[("LISTEN_ADDR", &addr)], Some(256));
    eventually(Duration::from_secs(30), "serve is ready", || async {
        readyz(port).await == Some(200)
    })
    .await;

    // 300 connections that send nothing, and 20 that open HTTP/2 cleartext
    // and then say nothing more.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    for _ in 0..20 {
        let mut h2 = TcpStream::connect(&addr).await.unwrap();
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        silent.push(h2);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // a health check and a new lead still get through
    eventually(Duration::from_secs(10), "/readyz answers", || async {
        readyz(port).await == Some(200)
    })
    .await;
    insert_proftest_lead(&client, "Флуд", "flood@mail.ru").await;
    eventually(Duration::from_secs(20), "the lead's email and SMS sent", || async {
        count(
            &client,
            "select count(*) from notification_jobs where channel in ('email', 'sms') and status = 'sent'",
        )
        .await
            == 2
    })
    .await;
    assert!(serve.is_running());

    // and every silent connection is closed within the header timeout
    let closed_within = Duration::from_secs(leadrelay::serve::HEADER_READ_TIMEOUT.as_secs() + 5);
    for mut stream in silent {
        let mut buf = [0u8; 1024];
        let ended = loop {
            match tokio::time::timeout(closed_within, stream.read(&mut buf)).await {
                // closed (an HTTP/2 preface may first get an HTTP/1 error answer)
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        assert!(ended, "a connection that sends nothing is closed");
    }
    serve.terminate();
}
