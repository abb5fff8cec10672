//! Multi-threaded stress tests of the conntrack table: no torn reads, no
//! duplicate inserts, no leaked slots or index entries. Each test is bounded
//! by a deadline so that it stays short in debug builds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use edgeplane_dataplane::conntrack::{Conntrack, Flow, FlowKey, InsertError, Timeouts};

const S: u64 = 1_000_000_000;
const UDP: u8 = 17;
const TCP: u8 = 6;

fn orig(i: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: [198, 18, (i >> 8) as u8, i as u8].into(),
        dst: [10, 96, 0, 1].into(),
        sport: 1024 + i,
        dport: 80,
        proto,
    }
}

/// Version `c` of flow `i`: every field but the original key derives from `c`.
fn versioned(i: u16, c: u32) -> Flow {
    let b = c.to_be_bytes();
    let backend: IpAddr = [10, b[1], b[2], b[3]].into();
    Flow::new(
        orig(i, UDP),
        FlowKey {
            src: [192, 168, 0, 1].into(),
            dst: backend,
            sport: 20000 + i,
            dport: (c % 60000) as u16,
            proto: UDP,
        },
        c,
        c as u8,
        c as u64,
    )
}

fn check_consistent(f: &Flow) {
    let c = f.frontend;
    let mut want = versioned(f.orig.sport - 1024, c);
    want.state = f.state;
    want.assured = f.assured;
    want.expires = f.expires;
    // validated_gen is either c (insert) or c + 1_000_000 (set_validated by the updater).
    want.validated_gen = f.validated_gen;
    assert!(
        f.validated_gen == c as u64 || f.validated_gen == c as u64 + 1_000_000,
        "torn: {f:?}"
    );
    assert_eq!(*f, want, "torn record");
}

#[test]
fn readers_never_see_torn_records() {
    const KEYS: u16 = 32;
    let t = Arc::new(Conntrack::new(256, 7, Timeouts::default()));
    for i in 0..KEYS {
        t.insert(versioned(i, 0), 0, 0).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clock = Arc::new(AtomicU64::new(S));
    let deadline = Instant::now() + Duration::from_millis(400);
    let mut handles = Vec::new();

    // Writer: replaces every flow with its next version.
    {
        let (t, clock) = (t.clone(), clock.clone());
        handles.push(thread::spawn(move || {
            let mut c = 1u32;
            while Instant::now() < deadline {
                for i in 0..KEYS {
                    let now = clock.fetch_add(S / 4, Ordering::Relaxed);
                    if let Some(h) = t.lookup(&orig(i, UDP), now) {
                        t.remove(&h);
                    }
                    match t.insert(versioned(i, c), now, 0) {
                        Ok(_) | Err(InsertError::Exists(_)) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                    c += 1;
                }
            }
            c
        }));
    }
    // Updater: reply-direction updates and validation marks on whatever it finds.
    {
        let (t, clock, stop) = (t.clone(), clock.clone(), stop.clone());
        handles.push(thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..KEYS {
                    let now = clock.load(Ordering::Relaxed);
                    if let Some(h) = t.lookup(&orig(i, UDP), now) {
                        check_consistent(&h.flow());
                        if let Some(r) = t.lookup(&h.flow().reply_key(), now) {
                            check_consistent(&r.flow());
                            let _ = t.update(&r, now, 0);
                        }
                        let _ = t.set_validated(&h, h.flow().frontend as u64 + 1_000_000);
                        n += 1;
                    }
                }
            }
            n
        }));
    }
    // Readers.
    for _ in 0..2 {
        let (t, clock, stop) = (t.clone(), clock.clone(), stop.clone());
        handles.push(thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let now = clock.load(Ordering::Relaxed);
                for i in 0..KEYS {
                    if let Some(h) = t.lookup(&orig(i, UDP), now) {
                        check_consistent(&h.flow());
                        n += 1;
                    }
                }
                t.for_each(now, check_consistent);
            }
            n
        }));
    }
    let versions = handles.remove(0).join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(versions > KEYS as u32, "writer made no progress");
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    assert_eq!(t.len(), KEYS as usize);
}

#[test]
fn concurrent_inserts_of_one_key_succeed_once() {
    const THREADS: usize = 4;
    const KEYS: u16 = 2000;
    let t = Arc::new(Conntrack::new(4096, 11, Timeouts::default()));
    let deadline = Instant::now() + Duration::from_millis(600);
    let mut round = 0u64;
    while round < 3 || Instant::now() < deadline {
        let start = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|w| {
                let (t, start) = (t.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    let mut won = Vec::new();
                    for k in 0..KEYS {
                        // Different orders per thread.
                        let i = if w % 2 == 0 { k } else { KEYS - 1 - k };
                        let mut f = versioned(i, w as u32);
                        f.orig.proto = TCP;
                        f.xlat.proto = TCP;
                        // Same orig key everywhere; same reply key too (port from i, backend from w differs!).
                        f.xlat.dst = [10, 1, 0, 1].into();
                        f.xlat.dport = 8080;
                        // Odd workers insert the engine's way (lookup
                        // misses handed to the insert, which may then skip
                        // its checks under the stripes).
                        let res = if w % 2 == 0 {
                            t.insert(f, round * S, 0x02)
                        } else {
                            let now = round * S;
                            let o = t.lookup_or_miss(&t.probe(&f.orig), now).err();
                            let r = t.lookup_or_miss(&t.probe(&f.reply_key()), now).err();
                            t.insert_after_miss(f, now, 0x02, o.as_ref(), r.as_ref())
                        };
                        match res {
                            Ok(h) => won.push((i, h.slot)),
                            Err(InsertError::Exists(h)) => assert_eq!(h.flow().orig, f.orig),
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    won
                })
            })
            .collect();
        let mut winners: HashMap<u16, u32> = HashMap::new();
        for h in handles {
            for (i, slot) in h.join().unwrap() {
                assert!(winners.insert(i, slot).is_none(), "key {i} inserted twice");
            }
        }
        assert_eq!(winners.len(), KEYS as usize);
        assert_eq!(t.len(), KEYS as usize);
        for i in 0..KEYS {
            let mut k = orig(i, TCP);
            k.proto = TCP;
            let h = t.lookup(&k, round * S).expect("present");
            assert_eq!(h.slot, winners[&i]);
            assert!(t.remove(&h));
        }
        assert_eq!(t.len(), 0);
        round += 1;
    }

    // Distinct original keys racing for one reply key: exactly one wins.
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|w| {
            let (t, start) = (t.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                (0..500u16)
                    .filter(|&i| {
                        let mut f = versioned(i, 1);
                        f.orig.sport = 5000 + w as u16; // unique per thread
                        f.orig.src = [198, 19, (i >> 8) as u8, i as u8].into();
                        match t.insert(f, 0, 0) {
                            Ok(_) => true,
                            Err(InsertError::ReplyTaken(h)) => {
                                assert_eq!(h.flow().reply_key(), f.reply_key());
                                false
                            }
                            Err(e) => panic!("{e:?}"),
                        }
                    })
                    .count()
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 500);
    assert_eq!(t.len(), 500);
}

#[test]
fn churn_under_pressure_leaks_nothing() {
    const THREADS: u64 = 4;
    const CAP: usize = 512;
    let t = Arc::new(Conntrack::new(CAP, 3, Timeouts::default()));
    let deadline = Instant::now() + Duration::from_millis(500);
    let handles: Vec<_> = (0..THREADS)
        .map(|w| {
            let t = t.clone();
            thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ w;
                let mut now = S;
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x % 4096) as u16;
                    let f = versioned(i, (x >> 32) as u32 % 8);
                    now += x % (S / 2);
                    match (x >> 20) % 8 {
                        0..=3 => {
                            let _ = t.insert(f, now, 0);
                        }
                        4 => {
                            if let Some(h) = t.lookup(&f.orig, now) {
                                t.remove(&h);
                            }
                        }
                        5 | 6 => {
                            if let Some(h) = t.lookup(&f.reply_key(), now) {
                                t.update(&h, now, 0);
                            }
                        }
                        _ => {
                            t.sweep(now, 64);
                        }
                    }
                    assert!(t.len() <= CAP);
                    ops += 1;
                }
                (ops, now)
            })
        })
        .collect();
    let mut latest = 0;
    for h in handles {
        let (ops, now) = h.join().unwrap();
        assert!(ops > 100);
        latest = latest.max(now);
    }
    let mut live = 0;
    t.for_each(0, |_| live += 1);
    assert_eq!(t.len(), live, "len matches the records present");
    // After everything expires and is swept, the whole capacity is usable again:
    // no slot and no index entry leaked.
    let end = latest + 1000 * S;
    t.sweep(end, CAP);
    assert_eq!(t.len(), 0);
    for i in 0..CAP as u16 {
        t.insert(versioned(i, 9), end, 0).expect("no leak");
    }
    assert_eq!(t.len(), CAP);
}
