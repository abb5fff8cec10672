//! Region tests: round trips, incremental publication, the RCU protocol
//! under concurrent readers, stuck and dead readers, corruption, recovery.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeplane_packet::Proto;
use proptest::prelude::*;

use super::format::{self, Layout};
use super::*;
use crate::tables::{
    Backend, EmptyAction, FrontendKey, FrontendKind, FrontendSpec, Segment, ServiceInfo, Tables,
    TablesBuilder,
};
use crate::testing::tables_content as normal;
use crate::testing::{fuzz_tables, node_config};

fn small_opts() -> WriterOptions {
    WriterOptions {
        slots: 4,
        readers: 16,
        slot_size: 1 << 20,
        arena_size: 16 << 20,
        stuck_wait: Duration::from_millis(200),
    }
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "edgeplane-region-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn round_trip_fuzz_tables() {
    let dir = tmpdir("rt");
    let t = fuzz_tables();
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    let rep = w.publish(&t).unwrap();
    assert_eq!(rep.generation, 1);
    let mut r = RegionReader::open(&dir).unwrap();
    let got = r.try_adopt().unwrap().expect("a generation");
    assert_eq!(got.generation, 1);
    assert!(got.frontends.iter().any(|f| f.maglev_width == 4));
    assert_eq!(normal(&got), normal(&t));
    // Zero-copy entries agree with the owned copy entry by entry.
    let owned = got.to_owned_maglev();
    for f in &got.frontends {
        for s in 0..f.maglev_len as usize {
            let i = got.frontend_index[&f.key] as usize;
            assert_eq!(
                got.maglev_entry(f, s),
                owned.maglev_entry(&owned.frontends[i], s)
            );
        }
    }
    // Nothing new: no adoption.
    assert!(r.try_adopt().unwrap().is_none());
    // Read-only snapshot (inspect) sees the same.
    let snap = RegionReader::open_read_only(&dir)
        .unwrap()
        .snapshot()
        .unwrap();
    assert_eq!(snap.generation, 1);
    assert_eq!(normal(&snap.tables), normal(&t));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir("mode");
    let _w = RegionWriter::open(&dir, small_opts()).unwrap();
    let fm = std::fs::metadata(region_path(&dir))
        .unwrap()
        .permissions()
        .mode();
    let dm = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(fm & 0o777, 0o600);
    assert_eq!(dm & 0o777, 0o700);
    let _ = std::fs::remove_dir_all(&dir);
}

fn ip4(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, a, b, c))
}

fn be(ip: IpAddr, port: u16) -> Backend {
    Backend {
        ip,
        port,
        ready: true,
        serving: true,
        terminating: false,
        local: false,
        weight: 1,
    }
}

/// Tables of `services` frontends; Service `i` has `n(i)` backends whose
/// port is `port(i)`, and Maglev entry `s` = `(s + salt(i)) % n`.
fn synth(
    services: usize,
    m: u32,
    n: impl Fn(usize) -> usize,
    port: impl Fn(usize) -> u16,
    salt: impl Fn(usize) -> usize,
) -> Tables {
    let mut b = TablesBuilder::new(node_config(), 0);
    for i in 0..services {
        let svc = b.add_service(ServiceInfo {
            namespace: "ns".into(),
            name: format!("svc-{i}-{}", port(i)),
            ..Default::default()
        });
        let k = n(i);
        let backends: Vec<_> = (0..k)
            .map(|j| be(ip4(19, (j / 250) as u8, (j % 250) as u8 + 1), port(i)))
            .collect();
        let maglev: Vec<u16> = if k == 0 {
            Vec::new()
        } else {
            (0..m as usize)
                .map(|s| ((s + salt(i)) % k) as u16)
                .collect()
        };
        b.add_frontend(
            FrontendSpec {
                key: FrontendKey {
                    ip: ip4(18, (i / 250) as u8, (i % 250) as u8 + 1),
                    port: 80,
                    proto: Proto::Tcp,
                },
                service: svc,
                kind: FrontendKind::ClusterIp,
                backends,
                n_new: k,
                empty_action: EmptyAction::Reject,
                snat: true,
                affinity_timeout: 0,
                affinity_group: svc,
                source_ranges: Vec::new(),
            },
            &maglev,
            m,
        )
        .unwrap();
    }
    b.finish()
}

#[test]
fn widths_4_8_16() {
    let dir = tmpdir("width");
    let t = synth(3, 521, |i| [10, 200, 300][i], |i| 1000 + i as u16, |i| i);
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    w.publish(&t).unwrap();
    let mut r = RegionReader::open(&dir).unwrap();
    let got = r.try_adopt().unwrap().unwrap();
    let widths: Vec<u8> = got.frontends.iter().map(|f| f.maglev_width).collect();
    assert_eq!(widths, vec![4, 8, 16]);
    assert_eq!(normal(&got), normal(&t));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_changed_service_writes_one_block() {
    let dir = tmpdir("incr");
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    let a = synth(50, 251, |_| 10, |i| 1000 + i as u16, |_| 0);
    let r1 = w.publish(&a).unwrap();
    assert_eq!((r1.blocks_written, r1.blocks_reused), (50, 0));
    let used = w.arena_used();
    // Service 7 gets other endpoints (new port): one block.
    let b = synth(
        50,
        251,
        |_| 10,
        |i| if i == 7 { 2000 } else { 1000 + i as u16 },
        |_| 0,
    );
    let r2 = w.publish(&b).unwrap();
    assert_eq!((r2.blocks_written, r2.blocks_reused), (1, 49));
    // Cycling through all slots frees the blocks nobody references.
    for _ in 0..6 {
        w.publish(&b).unwrap();
    }
    assert_eq!(w.arena_used(), used);
    // Everything changes: with no reader holding it, the old set is freed
    // at the next publication (the arena holds at most two sets).
    let c = synth(50, 251, |_| 10, |i| 3000 + i as u16, |_| 0);
    assert_eq!(w.publish(&c).unwrap().blocks_written, 50);
    assert_eq!(w.arena_used(), 2 * used);
    w.publish(&c).unwrap();
    assert_eq!(w.arena_used(), used);
    let mut r = RegionReader::open(&dir).unwrap();
    assert_eq!(normal(&r.try_adopt().unwrap().unwrap()), normal(&c));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Generation `g`'s content is a function of `g`: readers check it.
fn gen_tables(g: u64) -> Tables {
    let k = (g % 5) as usize + 1;
    synth(
        k,
        13,
        |i| (g as usize + i) % 20 + 1,
        |_| (g % 60000) as u16 + 1,
        |i| g as usize * 7 + i,
    )
}

fn check_gen(t: &Tables) -> Result<(), String> {
    let g = t.generation;
    let want = gen_tables(g);
    if normal(t) != normal(&want) {
        return Err(format!("generation {g} is torn"));
    }
    Ok(())
}

#[test]
fn concurrent_readers_never_see_a_torn_generation() {
    let dir = tmpdir("stress");
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    w.publish(&gen_tables(1)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let adopted = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (dir, stop, adopted) = (dir.clone(), stop.clone(), adopted.clone());
        readers.push(std::thread::spawn(move || -> Result<u64, String> {
            let mut r = RegionReader::open(&dir).map_err(|e| e.to_string())?;
            let mut cur: Option<Tables> = None;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = r.try_adopt().map_err(|e| e.to_string())? {
                    check_gen(&t)?;
                    cur = Some(t);
                    n += 1;
                    adopted.fetch_add(1, Ordering::Relaxed);
                    r.settle();
                }
                // Keep reading the held generation while the writer goes on.
                if let Some(t) = &cur {
                    std::thread::yield_now();
                    check_gen(t)?;
                }
            }
            Ok(n)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut g = 1;
    while Instant::now() < deadline || adopted.load(Ordering::Relaxed) < 400 {
        g += 1;
        let rep = w.publish(&gen_tables(g)).unwrap();
        assert_eq!(rep.generation, g);
        if Instant::now() > deadline + Duration::from_secs(20) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let n = r.join().unwrap().unwrap();
        assert!(n > 10, "a reader adopted only {n} generations");
    }
    assert!(g > 100, "only {g} generations published");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pinned_slot_is_skipped() {
    let dir = tmpdir("skip");
    let mut o = small_opts();
    o.slots = 3;
    o.stuck_wait = Duration::from_millis(50);
    let mut w = RegionWriter::open(&dir, o).unwrap();
    w.publish(&gen_tables(1)).unwrap();
    let mut r = RegionReader::open(&dir).unwrap();
    let held = r.try_adopt().unwrap().unwrap();
    r.settle(); // pinned at 1 and never moves
    for g in 2..20 {
        assert_eq!(w.publish(&gen_tables(g)).unwrap().generation, g);
    }
    // Generation 1's slot and Maglev blocks are intact.
    check_gen(&held).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stuck_reader_bounds_the_wait() {
    let dir = tmpdir("stuck");
    let mut o = small_opts();
    o.slots = 2;
    o.stuck_wait = Duration::from_millis(50);
    let mut w = RegionWriter::open(&dir, o).unwrap();
    w.publish(&gen_tables(1)).unwrap();
    let mut r = RegionReader::open(&dir).unwrap();
    let _held = r.try_adopt().unwrap().unwrap();
    r.settle(); // pinned at 1 and never moves
    w.publish(&gen_tables(2)).unwrap();
    let t0 = Instant::now();
    match w.publish(&gen_tables(3)) {
        Err(RegionError::ReadersStuck { pinned, .. }) => {
            assert_eq!(pinned, vec![(std::process::id(), 1)]);
        }
        other => panic!("expected ReadersStuck, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    let snap = RegionReader::open_read_only(&dir)
        .unwrap()
        .snapshot()
        .unwrap();
    assert_eq!((snap.generation, snap.stuck), (2, 1));
    // The reader moves on: publication resumes.
    let t = r.try_adopt().unwrap().unwrap();
    assert_eq!(t.generation, 2);
    r.settle();
    assert_eq!(w.publish(&gen_tables(3)).unwrap().generation, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dead_reader_is_ignored() {
    let dir = tmpdir("dead");
    let mut o = small_opts();
    o.slots = 2;
    o.stuck_wait = Duration::from_millis(50);
    let mut w = RegionWriter::open(&dir, o).unwrap();
    w.publish(&gen_tables(1)).unwrap();
    let r = RegionReader::open(&dir).unwrap();
    let pins = r.claim_pins(1).unwrap();
    pins.record(0, 1);
    // Make it look like a killed process: a pid that does not exist and
    // a heartbeat long past.
    let slot = pins.slots[0];
    let off = Layout::reader_off(slot);
    r.map
        .u32_at(off + format::R_PID)
        .store(0x3fff_fff0, Ordering::SeqCst);
    r.map
        .u64_at(off + format::R_HEARTBEAT)
        .store(0, Ordering::SeqCst);
    std::mem::forget(pins);
    drop(r);
    for g in 2..6 {
        w.publish(&gen_tables(g)).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Recomputes the CRC of `slot` after a test edited its body.
fn fix_crc(map: &Map, l: &Layout, slot: usize) {
    let d = Layout::desc_off(slot);
    let len = map.u64_at(d + format::D_LEN).load(Ordering::SeqCst) as usize;
    let body = map.read(l.slot_off(slot), len).unwrap();
    map.u64_at(d + format::D_CRC)
        .store(crc32c::crc32c(&body) as u64, Ordering::SeqCst);
}

/// Overwrites `data` at `at` in the first segment of `slot`'s generation
/// whose first frontend has a Maglev table, then fixes that segment's CRC
/// in the segment table and the body's CRC: damage only validation finds.
fn corrupt_segment(map: &Map, l: &Layout, slot: usize, at: usize, data: &[u8]) {
    let d = Layout::desc_off(slot);
    let len = map.u64_at(d + format::D_LEN).load(Ordering::SeqCst) as usize;
    let body = map.read(l.slot_off(slot), len).unwrap();
    let n = format::get_u32(&body, 8) as usize;
    let seg_off = format::get_u32(&body, 12) as usize;
    for i in 0..n {
        let e = seg_off + i * format::SEG_ENTRY_SIZE;
        let off = format::get_u32(&body, e) as usize;
        let slen = format::get_u32(&body, e + 4) as usize;
        let mut block = map.read(l.arena_off() + off, slen).unwrap();
        if format::get_u32(&block, 4) == 0 || block[format::SEG_HEADER + 27] == 0 {
            continue;
        }
        block[at..at + data.len()].copy_from_slice(data);
        map.write(l.arena_off() + off, &block);
        let mut v = [0u8; 4];
        format::put_u32(&mut v, 0, crc32c::crc32c(&block));
        map.write(l.slot_off(slot) + e + 8, &v);
        fix_crc(map, l, slot);
        return;
    }
    panic!("no segment with a Maglev table");
}

fn writer_map(w: &RegionWriter) -> (Arc<Map>, Layout) {
    (w.map.clone(), w.layout)
}

#[test]
fn corrupt_generations_are_refused_and_the_next_good_one_adopted() {
    let dir = tmpdir("corrupt");
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    let t = fuzz_tables();
    w.publish(&t).unwrap();
    let mut r = RegionReader::open(&dir).unwrap();
    assert!(r.try_adopt().unwrap().is_some());
    r.settle();
    let (map, l) = writer_map(&w);

    // 1. A flipped byte: CRC mismatch.
    let rep = w.publish(&t).unwrap();
    map.write(l.slot_off(rep.slot) + 100, &[0xa5]);
    assert!(matches!(r.try_adopt(), Err(RegionError::Corrupt { .. })));
    // Refused once, then quietly kept refusing that generation.
    assert!(r.try_adopt().unwrap().is_none());
    assert_eq!(r.refused_count, 1);

    // 1b. A flipped byte in a segment block (shared, outside the slot):
    //     its own CRC refuses it (a reader that has not decoded it before:
    //     `r` keeps the segments it validated, and the writer never changes
    //     a block in place).
    let mut r2 = RegionReader::open(&dir).unwrap();
    let rep = w.publish(&t).unwrap();
    let body = map
        .read(
            l.slot_off(rep.slot),
            map.u64_at(Layout::desc_off(rep.slot) + format::D_LEN)
                .load(Ordering::SeqCst) as usize,
        )
        .unwrap();
    let seg0 = format::get_u32(&body, format::get_u32(&body, 12) as usize) as usize;
    let b = map.read(l.arena_off() + seg0 + 40, 1).unwrap()[0];
    map.write(l.arena_off() + seg0 + 40, &[b ^ 0x5a]);
    match r2.try_adopt() {
        Err(RegionError::Corrupt { what, .. }) => assert!(what.contains("CRC"), "{what}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    drop(r2);
    // `r` adopts it from the segments it validated before.
    assert!(r.try_adopt().unwrap().is_some());
    r.settle();

    // 2. A Maglev block offset past the arena, with a valid CRC.
    let rep = w.publish(&t).unwrap();
    let fe0 = format::SEG_HEADER;
    let mut v = [0u8; 4];
    format::put_u32(&mut v, 0, l.arena_size as u32 - 8);
    corrupt_segment(&map, &l, rep.slot, fe0 + 40, &v);
    match r.try_adopt() {
        Err(RegionError::Corrupt { what, .. }) => {
            assert!(what.contains("past the arena"), "{what}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // 3. A backend run past the end, with a valid CRC.
    let rep = w.publish(&t).unwrap();
    format::put_u32(&mut v, 0, 1 << 30);
    corrupt_segment(&map, &l, rep.slot, fe0 + 28, &v);
    assert!(matches!(r.try_adopt(), Err(RegionError::Corrupt { .. })));

    // 4. A length past the slot.
    let rep = w.publish(&t).unwrap();
    map.u64_at(Layout::desc_off(rep.slot) + format::D_LEN)
        .store(u64::MAX, Ordering::SeqCst);
    assert!(matches!(r.try_adopt(), Err(RegionError::Corrupt { .. })));

    // 5. The next good generation is adopted.
    w.publish(&t).unwrap();
    let got = r.try_adopt().unwrap().unwrap();
    assert_eq!(normal(&got), normal(&t));
    assert_eq!(r.refused_count, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random bytes over a slot body, CRC fixed up: refused or adopted,
    /// never a panic; adopted tables are safe to look up everywhere.
    #[test]
    fn random_bytes_in_a_slot_never_panic(
        edits in proptest::collection::vec((0usize..4096, any::<u8>()), 1..40)
    ) {
        let dir = tmpdir("fuzz");
        let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
        let rep = w.publish(&fuzz_tables()).unwrap();
        let (map, l) = writer_map(&w);
        let len = map.u64_at(Layout::desc_off(rep.slot) + format::D_LEN).load(Ordering::SeqCst) as usize;
        for (at, b) in edits {
            map.write(l.slot_off(rep.slot) + at % len, &[b]);
        }
        fix_crc(&map, &l, rep.slot);
        let mut r = RegionReader::open(&dir).unwrap();
        if let Ok(Some(t)) = r.try_adopt() {
            for f in &t.frontends {
                for s in 0..f.maglev_len as usize {
                    if let Some(e) = t.maglev_entry(f, s) {
                        let _ = t.new_backends(f).get(e as usize);
                    }
                }
                let _ = t.all_backends(f);
                let _ = t.source_ranges(f);
                prop_assert!((f.service as usize) < t.services.len());
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Tables → region → Tables is the identity (up to Maglev placement).
    #[test]
    fn round_trip(
        sizes in proptest::collection::vec(0usize..40, 1..12),
        m in prop_oneof![Just(7u32), Just(13), Just(251)],
        salt in 0usize..1000,
    ) {
        let dir = tmpdir("prop");
        let t = synth(sizes.len(), m, |i| sizes[i], |i| 100 + i as u16, |i| i + salt);
        let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
        w.publish(&t).unwrap();
        let mut r = RegionReader::open(&dir).unwrap();
        let got = r.try_adopt().unwrap().unwrap();
        prop_assert_eq!(normal(&got), normal(&t));
        prop_assert_eq!(normal(&got.to_owned_maglev()), normal(&t));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bad_files_are_refused_without_panic() {
    let dir = tmpdir("badfile");
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    w.publish(&fuzz_tables()).unwrap();
    drop(w);
    let path = region_path(&dir);
    // Truncated.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(10_000).unwrap();
    assert!(matches!(
        RegionReader::open(&dir),
        Err(RegionError::Layout { .. })
    ));
    assert!(matches!(
        RegionReader::open_read_only(&dir),
        Err(RegionError::Layout { .. })
    ));
    f.set_len(0).unwrap();
    assert!(matches!(
        RegionReader::open(&dir),
        Err(RegionError::Layout { .. })
    ));
    // Random header.
    std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
    assert!(matches!(
        RegionReader::open(&dir),
        Err(RegionError::Layout { .. })
    ));
    // The writer replaces what it cannot use, with a new inode.
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    assert_eq!(w.publish(&fuzz_tables()).unwrap().generation, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn layout_version_change_recreates_and_readers_notice() {
    let dir = tmpdir("version");
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    w.publish(&fuzz_tables()).unwrap();
    let r = RegionReader::open(&dir).unwrap();
    let mut v = [0u8; 4];
    format::put_u32(&mut v, 0, 99);
    w.map.write(format::H_VERSION, &v);
    drop(w);
    assert!(!r.replaced());
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    assert!(r.replaced());
    assert_eq!(w.publish(&fuzz_tables()).unwrap().generation, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restarted_writer_recovers_blocks_and_numbering() {
    let dir = tmpdir("recover");
    let t = synth(20, 251, |_| 10, |i| 1000 + i as u16, |_| 0);
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    for _ in 0..3 {
        w.publish(&t).unwrap();
    }
    let used = w.arena_used();
    // Killed mid-write: a non-active slot with a generation and a bad body.
    let (map, l) = writer_map(&w);
    let (gen, active) = RegionReader::open_read_only(&dir).unwrap().active();
    let victim = (active + l.n_slots - 1) % l.n_slots;
    map.write(l.slot_off(victim), &[0xff; 64]);
    map.u64_at(Layout::desc_off(victim) + format::D_GENERATION)
        .store(gen - 1, Ordering::SeqCst);
    std::mem::forget(w); // no Drop: the writer pid stays (it is ours, so it is taken over)
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    assert_eq!(w.generation(), gen);
    assert_eq!(w.arena_used(), used);
    let rep = w.publish(&t).unwrap();
    assert_eq!(
        (rep.generation, rep.blocks_written, rep.blocks_reused),
        (gen + 1, 0, 20)
    );
    let mut r = RegionReader::open(&dir).unwrap();
    assert_eq!(normal(&r.try_adopt().unwrap().unwrap()), normal(&t));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_live_writer_is_refused() {
    let dir = tmpdir("twowriters");
    let _w = RegionWriter::open(&dir, small_opts()).unwrap();
    // Pretend another live process holds it: pid 1 always exists.
    let (map, _) = writer_map(&_w);
    map.u32_at(format::H_WRITER_PID).store(1, Ordering::SeqCst);
    assert!(matches!(
        RegionWriter::open(&dir, small_opts()),
        Err(RegionError::AnotherWriter(1))
    ));
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

/// The `region` fuzz target's seed: the writer's own encoding of
/// `fuzz_tables` is accepted, forwards SYNs through the arena-backed Maglev
/// tables, and is what fuzz/corpus/region holds (regenerate with
/// `EDGEPLANE_WRITE_CORPUS=1 cargo test -p edgeplane-dataplane region_fuzz_seed`).
#[test]
fn region_fuzz_seed_decodes_forwards_and_is_in_the_corpus() {
    let seed = crate::testing::region_fuzz_input(&fuzz_tables());
    let tx = crate::testing::region_fuzz_one(&seed).expect("the writer's encoding is accepted");
    assert!(
        tx > 0,
        "no SYN forwarded through arena-backed Maglev tables"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/region");
    if std::env::var_os("EDGEPLANE_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("seed-000"), &seed).unwrap();
    }
    let present = std::fs::read(dir.join("seed-000")).unwrap_or_default();
    assert!(
        present == seed,
        "fuzz/corpus/region/seed-000 is missing or stale: run EDGEPLANE_WRITE_CORPUS=1 cargo test -p edgeplane-dataplane region_fuzz_seed"
    );
}

/// The fuzz target's function on 20,000 deterministic mutations of the
/// seed (flipped bytes in the body and the arena, truncations): never a
/// panic, and some mutations are refused while others still pass.
#[test]
fn mutated_region_inputs_never_panic() {
    let seed = crate::testing::region_fuzz_input(&fuzz_tables());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut refused, mut accepted) = (0u32, 0u32);
    for _ in 0..20_000 {
        let mut d = seed.clone();
        for _ in 0..1 + next() % 6 {
            let at = (next() % d.len() as u64) as usize;
            d[at] = next() as u8;
        }
        if next() % 8 == 0 {
            d.truncate((next() % d.len() as u64) as usize);
        }
        match crate::testing::region_fuzz_one(&d) {
            Some(_) => accepted += 1,
            None => refused += 1,
        }
    }
    assert!(
        refused > 0 && accepted > 0,
        "refused {refused}, accepted {accepted}"
    );
}

#[test]
fn shared_segments_cost_only_what_changed() {
    let dir = tmpdir("segs");
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    let a = synth(50, 251, |_| 10, |i| 1000 + i as u16, |_| 0);
    let mut segs = a.to_segments();
    assert_eq!(segs.len(), 50);
    let r1 = w.publish_segments(&a.node, &segs).unwrap();
    assert_eq!((r1.segments_written, r1.blocks_written), (50, 50));
    // The same `Arc`s again: only the body is written.
    let r2 = w.publish_segments(&a.node, &segs).unwrap();
    assert_eq!(
        (
            r2.segments_written,
            r2.segments_kept,
            r2.blocks_written,
            r2.arena_bytes_written
        ),
        (0, 50, 0, 0)
    );
    // One Service changes: one segment and one Maglev block.
    let b = synth(
        50,
        251,
        |_| 10,
        |i| if i == 7 { 2000 } else { 1000 + i as u16 },
        |_| 0,
    );
    segs[7] = b.to_segments()[7].clone();
    let r3 = w.publish_segments(&b.node, &segs).unwrap();
    assert_eq!((r3.segments_written, r3.blocks_written), (1, 1));
    let mut r = RegionReader::open(&dir).unwrap();
    assert_eq!(normal(&r.try_adopt().unwrap().unwrap()), normal(&b));
    r.settle();
    // A Service removed, another appended (positions shift): nothing new
    // but the appended one; the reader sees exactly the list.
    segs.remove(3);
    let extra = synth(51, 251, |_| 10, |i| 1000 + i as u16, |_| 0).to_segments()[50].clone();
    segs.push(extra);
    let r4 = w.publish_segments(&b.node, &segs).unwrap();
    assert_eq!((r4.segments_written, r4.blocks_written), (1, 1));
    let want = Tables::from_segments(b.node.clone(), 0, &segs);
    assert_eq!(normal(&r.try_adopt().unwrap().unwrap()), normal(&want));
    r.settle();
    // Retired segments are freed once no slot holds their generations.
    let used = w.arena_used();
    for _ in 0..6 {
        w.publish_segments(&b.node, &segs).unwrap();
        assert!(r.try_adopt().unwrap().is_some());
        r.settle();
    }
    assert!(w.arena_used() < used, "{} < {used}", w.arena_used());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cached_adoption_equals_a_fresh_read_across_writer_restarts() {
    let dir = tmpdir("cache");
    let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
    let mut r = RegionReader::open(&dir).unwrap();
    // Contents recur (every Service toggles between two endpoint sets, one
    // changes for good now and then), so blocks recovered by a restarted
    // writer are found again by content, some after they were freed.
    let port = |k: usize| {
        move |i: usize| {
            if i == k % 7 {
                3000 + k as u16
            } else {
                1000 + i as u16 + 100 * ((k + i) % 2) as u16
            }
        }
    };
    for k in 0..90 {
        if k % 11 == 10 {
            // The writer restarts (as after kill -9): recovery.
            std::mem::forget(w);
            w = RegionWriter::open(&dir, small_opts()).unwrap();
        }
        let t = synth(7 + k % 3, 251, |i| 2 + (i + k) % 2, port(k), |_| 0);
        w.publish(&t).unwrap();
        let got = r.try_adopt().unwrap().expect("a new generation");
        r.settle();
        let fresh = RegionReader::open_read_only(&dir)
            .unwrap()
            .snapshot()
            .unwrap()
            .tables;
        assert_eq!(normal(&got), normal(&t), "step {k}");
        assert_eq!(normal(&fresh), normal(&t), "step {k}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random sequences of segment lists — a Service set to one of a few
    /// contents (as the pool's shared `Arc` or a fresh copy), removed,
    /// added back, the same list again, the writer restarted — always
    /// publish exactly the list: the adopting reader (with its cache) and
    /// a fresh read-only copy both equal `Tables::from_segments`.
    #[test]
    fn random_segment_lists_publish_exactly(
        ops in proptest::collection::vec((0u8..5, 0usize..10, 0usize..3), 1..50)
    ) {
        let dir = tmpdir("seglists");
        let pool: Vec<Vec<Arc<Segment>>> = (0..3)
            .map(|v| {
                synth(10, 251, |i| 1 + (i + v) % 3, |i| 1000 + (i * 3 + v) as u16, |_| v)
                    .to_segments()
            })
            .collect();
        let node = node_config();
        let mut list: Vec<Option<Arc<Segment>>> = (0..10).map(|i| Some(pool[0][i].clone())).collect();
        let mut w = RegionWriter::open(&dir, small_opts()).unwrap();
        let mut r = RegionReader::open(&dir).unwrap();
        for (op, i, v) in ops {
            match op {
                0 => list[i] = Some(pool[v][i].clone()),
                1 => list[i] = Some(Arc::new((*pool[v][i]).clone())),
                2 => list[i] = None,
                3 => {}
                _ => {
                    drop(r);
                    std::mem::forget(w);
                    w = RegionWriter::open(&dir, small_opts()).unwrap();
                    // A new reader protects everything until it adopts.
                    r = RegionReader::open(&dir).unwrap();
                    let _ = r.try_adopt().unwrap();
                    r.settle();
                }
            }
            let segs: Vec<Arc<Segment>> = list.iter().flatten().cloned().collect();
            w.publish_segments(&node, &segs).unwrap();
            let want = normal(&Tables::from_segments(node.clone(), 0, &segs));
            let got = r.try_adopt().unwrap().expect("a new generation");
            r.settle();
            prop_assert_eq!(normal(&got), want.clone());
            let fresh = RegionReader::open_read_only(&dir).unwrap().snapshot().unwrap().tables;
            prop_assert_eq!(normal(&fresh), want);
        }
        drop(r);
        drop(w);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
