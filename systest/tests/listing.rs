#![cfg(feature = "e2e")]
//! Listing every user, streamed page by page (docs/api.md §3.1), through the
//! load balancer, with a page of 7 names (`USERS_LIST_PAGE`) so that a few
//! thousand users take hundreds of pages: the list is complete, sorted in
//! SQLite's binary order (byte order, as `ORDER BY username` always gave), no
//! name twice; and while users are created and deleted during a listing,
//! every user that exists throughout is in it, still sorted and unique.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use systest::{Stack, StackOptions};
use wire::{Condition, Value, WriteRequest};

const PAGE: usize = 7;
const PASSWORD: &str = "3d725109c7e7c0bfb9d709836735b56d943d263f";

fn insert(name: &str) -> WriteRequest {
    WriteRequest::insert("users", [("username", Value::from(name)), ("password", Value::from(PASSWORD))])
}

/// Names chosen to make byte order matter: case, digits, quotes, backslashes, non-ASCII.
fn name(i: usize) -> String {
    match i % 6 {
        0 => format!("user{i:05}"),
        1 => format!("User{i}"),
        2 => format!("é-{i}"),
        3 => format!("a\"quote\\{i}"),
        4 => format!("{i}"),
        _ => format!("zz {i} ✓"),
    }
}

async fn write_all(stack: &Stack, writes: Vec<WriteRequest>) {
    let failed: Vec<String> = stream::iter(writes)
        .map(|w| async move {
            match stack.write(&w).await {
                Ok((201, _)) => None,
                other => Some(format!("{:?}: {other:?}", w.values.get("username"))),
            }
        })
        .buffer_unordered(32)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    assert!(failed.is_empty(), "writes failed: {failed:?}");
}

/// The list as the load balancer answers it, checked to be sorted and without duplicates.
async fn list(c: &reqwest::Client, lb: &str) -> Vec<String> {
    let r = c.get(format!("{lb}/api/v1/users")).send().await.expect("the listing answers");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = r.bytes().await.expect("the whole body");
    let names: Vec<String> = serde_json::from_slice(&body).expect("one JSON array of strings");
    for w in names.windows(2) {
        assert!(w[0] < w[1], "not strictly ascending: {:?} then {:?}", w[0], w[1]);
    }
    names
}

/// The listing is exactly `expected` (every user, in byte order); says where it is not.
fn same(got: &[String], expected: &[String]) {
    if let Some(i) = (0..got.len().max(expected.len())).find(|&i| got.get(i) != expected.get(i)) {
        panic!(
            "listing differs at {i} of {} (expected {}): got {:?}, expected {:?}",
            got.len(),
            expected.len(),
            got.get(i),
            expected.get(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_every_user_is_complete_sorted_and_unique_across_pages() {
    // Inherited by the users service this test's stack starts (the only test of this file).
    std::env::set_var("USERS_LIST_PAGE", PAGE.to_string());
    let stack = Stack::start(StackOptions { services: true, ..Default::default() }).await.expect("the stack starts");
    let c = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let users = format!("{}/api/v1/users", stack.lb);

    let r = c.get(&users).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204, "no users: 204");
    assert!(r.bytes().await.unwrap().is_empty());

    // A multiple of the page: the last read comes back empty and the list still closes.
    let n = PAGE * 429;
    write_all(&stack, (0..n).map(|i| insert(&name(i))).collect()).await;
    let mut expected: Vec<String> = (0..n).map(name).collect();
    expected.sort();
    let started = Instant::now();
    let got = list(&c, &stack.lb).await;
    eprintln!("listed {} names in {} pages of {PAGE} in {:?}", got.len(), n / PAGE + 1, started.elapsed());
    same(&got, &expected);

    // One more user: a list that ends on a partial page.
    write_all(&stack, vec![insert("~last")]).await;
    expected.push("~last".into());
    expected.sort();
    same(&list(&c, &stack.lb).await, &expected);

    // Writes during listings: the users that exist throughout are all there.
    let stable: BTreeSet<String> = expected.iter().filter(|n| !n.starts_with("user")).cloned().collect();
    let churned: Vec<String> = expected.iter().filter(|n| n.starts_with("user")).cloned().collect();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, stack) = (stop.clone(), Arc::new(stack));
        let s = stack.clone();
        let task = tokio::spawn(async move {
            let mut rounds = 0u64;
            let end = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                // Delete a name near the front and create ones on both ends and in between.
                let victim = &churned[(rounds as usize * 37) % churned.len()];
                let _ = s.write(&WriteRequest::delete("users", vec![Condition::eq("username", victim.as_str())])).await;
                for fresh in [format!("!{rounds}"), format!("user{rounds:05}x"), format!("\u{10FFFF}{rounds}")] {
                    let (status, body) = s.write(&insert(&fresh)).await.unwrap();
                    assert_eq!(status, 201, "{body}");
                }
                rounds += 1;
            }
            rounds
        });
        (stack, task)
    };
    let (stack, task) = churn;
    for _ in 0..3 {
        let got = list(&c, &stack.lb).await;
        let seen: BTreeSet<&String> = got.iter().collect();
        assert_eq!(seen.len(), got.len(), "no name twice");
        let missing: Vec<&String> = stable.iter().filter(|n| !seen.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "users that existed throughout are missing: {:?}",
            &missing[..missing.len().min(5)]
        );
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = task.await.unwrap();
    assert!(rounds > 0, "writes went on during the listings");
    eprintln!("{rounds} rounds of writes during three listings");
}
