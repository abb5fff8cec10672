//! Property test: random single-threaded sequences of insert / reply / lookup /
//! remove / sweep / time advance against a model of the conntrack table.
//!
//! The model knows every allocated record. Where the table may choose (which
//! unconfirmed record to evict), the model adopts the table's choice and checks
//! that it was allowed: only an expired or unconfirmed record may disappear,
//! never a confirmed live one, and never more than the insert needed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use edgeplane_dataplane::conntrack::{Conntrack, Dir, Flow, FlowKey, InsertError, Timeouts};
use proptest::prelude::*;

const S: u64 = 1_000_000_000;
const UDP: u8 = 17;

fn flow(p: u16) -> Flow {
    let client: IpAddr = [198, 18, (p >> 8) as u8, p as u8].into();
    Flow::new(
        FlowKey {
            src: client,
            dst: [10, 96, 0, 10].into(),
            sport: 1000 + p,
            dport: 53,
            proto: UDP,
        },
        FlowKey {
            src: [192, 168, 0, 1].into(),
            dst: [10, 0, 0, 2].into(),
            sport: 40000 + p,
            dport: 5353,
            proto: UDP,
        },
        p as u32,
        0,
        p as u64,
    )
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u16),
    Reply(u16),
    Lookup(u16),
    Remove(u16),
    Sweep(usize),
    Advance(u64),
}

fn op(keys: u16) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..keys).prop_map(Op::Insert),
        2 => (0..keys).prop_map(Op::Reply),
        2 => (0..keys).prop_map(Op::Lookup),
        1 => (0..keys).prop_map(Op::Remove),
        1 => (1usize..40).prop_map(Op::Sweep),
        2 => (0..40 * S).prop_map(Op::Advance),
    ]
}

/// Model of one record: expiry (whole seconds) and whether it is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct M {
    exp: u64,
    assured: bool,
}

fn exp_at(now: u64, timeout: u64) -> u64 {
    now.div_ceil(S) + timeout
}

/// Every allocated record as the table sees it (`now = 0` hides no record:
/// every expiry is later than that).
fn table_state(t: &Conntrack) -> BTreeMap<u16, M> {
    let mut m = BTreeMap::new();
    t.for_each(0, |f| {
        let p = f.orig.sport - 1000;
        assert_eq!(
            *f,
            Flow {
                state: f.state,
                assured: f.assured,
                expires: f.expires,
                ..flow(p)
            }
        );
        assert!(
            m.insert(
                p,
                M {
                    exp: f.expires / S,
                    assured: f.assured
                }
            )
            .is_none(),
            "duplicate flow"
        );
    });
    m
}

fn run(cap: usize, ops: Vec<Op>) {
    let t = Conntrack::new(cap, 42, Timeouts::default());
    let mut model: BTreeMap<u16, M> = BTreeMap::new();
    let mut now = 5 * S + 123;
    for op in ops {
        let now_s = now / S;
        let live = |m: &BTreeMap<u16, M>, p: u16| m.get(&p).is_some_and(|r| r.exp > now_s);
        match op {
            Op::Insert(p) => {
                let was_live = live(&model, p);
                // Half the inserts go the engine's way: look both keys up,
                // then insert with the misses (which may skip the checks
                // under the stripes); the result must be the same.
                let f = flow(p);
                let res = if p % 2 == 0 {
                    t.insert(f, now, 0)
                } else {
                    let o = t.lookup_or_miss(&t.probe(&f.orig), now).err();
                    let r = t.lookup_or_miss(&t.probe(&f.reply_key()), now).err();
                    t.insert_after_miss(f, now, 0, o.as_ref(), r.as_ref())
                };
                match &res {
                    Err(InsertError::Exists(h)) => {
                        assert!(was_live, "Exists for a dead key");
                        assert_eq!(h.flow().orig, flow(p).orig);
                    }
                    Err(InsertError::ReplyTaken(_)) => panic!("reply keys are unique here"),
                    Ok(h) => {
                        assert!(!was_live, "inserted a live key twice");
                        assert_eq!(h.flow().expires, exp_at(now, 30) * S);
                    }
                    Err(InsertError::Full) => assert!(!was_live),
                }
                let after = table_state(&t);
                // Nothing appears that the model does not know, except the new flow.
                for (k, v) in &after {
                    if res.is_ok() && *k == p {
                        assert_eq!(
                            *v,
                            M {
                                exp: exp_at(now, 30),
                                assured: false
                            }
                        );
                    } else {
                        assert_eq!(model.get(k), Some(v), "unexpected change to {k}");
                    }
                }
                // What disappeared was allowed to.
                let gone: Vec<u16> = model
                    .keys()
                    .filter(|k| !after.contains_key(k))
                    .copied()
                    .collect();
                for k in &gone {
                    let r = model[k];
                    assert!(
                        r.exp <= now_s || !r.assured,
                        "confirmed live flow {k} evicted"
                    );
                }
                // Live (unconfirmed) victims: at most one for the slot, only
                // when the table was full, plus, rarely, one for a full pair of
                // index buckets. Expired records may go in any number (the
                // small sweep of a full insert).
                let evicted_live = gone.iter().filter(|k| model[*k].exp > now_s).count();
                assert!(
                    evicted_live <= 1 + usize::from(model.len() >= cap),
                    "{gone:?}"
                );
                match res {
                    Ok(_) => {}
                    Err(InsertError::Full) => {
                        assert!(
                            model.len() >= cap || !gone.is_empty() || cap < 4,
                            "Full with free space"
                        );
                    }
                    Err(_) => assert!(gone.is_empty()),
                }
                model = after;
            }
            Op::Reply(p) => {
                let h = t.lookup(&flow(p).reply_key(), now);
                assert_eq!(h.is_some(), live(&model, p));
                if let Some(h) = h {
                    assert_eq!(h.dir, Dir::Reply);
                    assert!(t.update(&h, now, 0).is_some());
                    let r = model.get_mut(&p).unwrap();
                    if !r.assured {
                        *r = M {
                            exp: exp_at(now, 120),
                            assured: true,
                        };
                    } else {
                        let new = exp_at(now, 120);
                        if new > r.exp {
                            r.exp = new;
                        }
                    }
                }
            }
            Op::Lookup(p) => {
                let h = t.lookup(&flow(p).orig, now);
                assert_eq!(h.is_some(), live(&model, p), "lookup {p} at {now_s}");
                if let Some(h) = h {
                    assert_eq!(h.dir, Dir::Original);
                    assert_eq!(h.flow().expires / S, model[&p].exp);
                    assert_eq!(h.flow().assured, model[&p].assured);
                }
            }
            Op::Remove(p) => {
                if let Some(h) = t.lookup(&flow(p).orig, now) {
                    assert!(t.remove(&h));
                    model.remove(&p);
                    assert!(t.lookup(&flow(p).reply_key(), now).is_none());
                }
            }
            Op::Sweep(budget) => {
                let freed = t.sweep(now, budget);
                let after = table_state(&t);
                let gone: Vec<u16> = model
                    .keys()
                    .filter(|k| !after.contains_key(k))
                    .copied()
                    .collect();
                assert_eq!(gone.len(), freed);
                assert!(
                    gone.iter().all(|k| model[k].exp <= now_s),
                    "swept a live flow"
                );
                model = after;
            }
            Op::Advance(d) => now += d,
        }
        assert!(t.len() <= t.capacity());
        assert_eq!(t.len(), model.len(), "len");
    }
    // Everything comes back.
    let end = now + 1000 * S;
    t.sweep(end, t.capacity());
    assert_eq!(t.len(), 0);
    for p in 0..cap as u16 {
        t.insert(flow(p), end, 0)
            .expect("a cleared table holds `capacity` flows");
    }
    assert_eq!(t.len(), cap);
}

proptest! {
    #[test]
    fn small_table_under_pressure(ops in proptest::collection::vec(op(48), 1..300)) {
        run(16, ops);
    }

    #[test]
    fn roomy_table(ops in proptest::collection::vec(op(40), 1..300)) {
        run(64, ops);
    }
}
