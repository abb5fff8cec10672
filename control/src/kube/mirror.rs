//! The sans-IO half of the Kubernetes source: watch events in, consistent
//! [`ObjectSet`] snapshots out. No sockets, no clock (time is a parameter),
//! so every rule here is unit-tested with literal events.
//!
//! Promises:
//! - [`Mirror`] keeps one resource type the way kube-runtime's reflector
//!   does: the objects of a (re)list are buffered from `Init` to `InitDone`
//!   and then replace the mirrored set whole, so a half-listed view is never
//!   visible; `Apply`/`Delete` change it one object at a time.
//! - [`Mirrors::snapshot`] returns `None` until all three types have
//!   completed their first list.
//! - [`Coalescer`] turns a burst of changes into one publication: it fires
//!   `quiet` after the last change, but never later than `max` after the
//!   first unpublished one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use kube::runtime::watcher::Event;

use crate::manifests::ObjectSet;

/// (namespace, name): the identity of an object.
type Key = (String, String);

fn key_of<K: Metadata<Ty = ObjectMeta>>(o: &K) -> Key {
    let m = o.metadata();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// What an event did to a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing visible changed (an object buffered during a list).
    None,
    /// The mirrored set changed.
    Changed,
    /// A list completed and replaced the set (the first one, or a relist).
    Listed { relist: bool },
}

/// The mirrored objects of one resource type.
#[derive(Debug, Clone)]
pub struct Mirror<K> {
    live: BTreeMap<Key, K>,
    /// Objects of a list in progress (`Init` .. `InitDone`).
    staging: Option<BTreeMap<Key, K>>,
    /// Completed lists so far.
    lists: u64,
    /// Keys changed since the last [`Mirrors::publish_into`].
    dirty: BTreeSet<Key>,
    /// A list completed since the last [`Mirrors::publish_into`].
    relisted: bool,
}

impl<K> Default for Mirror<K> {
    fn default() -> Self {
        Mirror {
            live: BTreeMap::new(),
            staging: None,
            lists: 0,
            dirty: BTreeSet::new(),
            relisted: false,
        }
    }
}

impl<K: Metadata<Ty = ObjectMeta> + Clone> Mirror<K> {
    /// Applies one watcher event.
    pub fn handle(&mut self, ev: Event<K>) -> Change {
        match ev {
            Event::Init => {
                self.staging = Some(BTreeMap::new());
                Change::None
            }
            Event::InitApply(o) => {
                self.staging
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key_of(&o), o);
                Change::None
            }
            Event::InitDone => {
                self.live = self.staging.take().unwrap_or_default();
                self.lists += 1;
                self.relisted = true;
                self.dirty.clear();
                Change::Listed {
                    relist: self.lists > 1,
                }
            }
            Event::Apply(o) => {
                let k = key_of(&o);
                self.live.insert(k.clone(), o);
                self.dirty.insert(k);
                Change::Changed
            }
            Event::Delete(o) => {
                let k = key_of(&o);
                self.live.remove(&k);
                self.dirty.insert(k);
                Change::Changed
            }
        }
    }

    /// An object added or modified (a watch `Apply`).
    pub fn apply(&mut self, o: K) -> Change {
        self.handle(Event::Apply(o))
    }

    /// An object deleted (a watch `Delete`).
    pub fn delete(&mut self, o: K) -> Change {
        self.handle(Event::Delete(o))
    }

    /// A complete (re)list: `Init`, every object, `InitDone`.
    pub fn relist(&mut self, objects: impl IntoIterator<Item = K>) -> Change {
        self.handle(Event::Init);
        for o in objects {
            self.handle(Event::InitApply(o));
        }
        self.handle(Event::InitDone)
    }

    /// Whether a first list has completed.
    pub fn synced(&self) -> bool {
        self.lists > 0
    }

    /// The mirrored objects, in (namespace, name) order.
    pub fn objects(&self) -> impl Iterator<Item = &K> {
        self.live.values()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Brings `out` (indexed by `index`) up to date with the mirror, copying
    /// only what changed since the last call (and journaling it), or
    /// everything after a list (then returns true: the journal must start
    /// a new lineage).
    fn sync_into(
        &mut self,
        out: &mut Vec<K>,
        index: &mut HashMap<Key, usize>,
        full: bool,
        journal: &mut crate::manifests::Journal,
        kind: crate::manifests::ObjKind,
    ) -> bool {
        let rebuilt = full || self.relisted;
        if rebuilt {
            out.clear();
            index.clear();
            for (k, o) in &self.live {
                index.insert(k.clone(), out.len());
                out.push(o.clone());
            }
        } else {
            for k in &self.dirty {
                match (self.live.get(k), index.get(k).copied()) {
                    (Some(o), Some(i)) => {
                        out[i] = o.clone();
                        journal.push(kind, &k.0, &k.1, Some(i));
                    }
                    (Some(o), None) => {
                        index.insert(k.clone(), out.len());
                        out.push(o.clone());
                        journal.push(kind, &k.0, &k.1, Some(out.len() - 1));
                    }
                    (None, Some(i)) => {
                        index.remove(k);
                        out.swap_remove(i);
                        journal.push(kind, &k.0, &k.1, None);
                        if let Some(moved) = out.get(i) {
                            let mk = key_of(moved);
                            journal.push(kind, &mk.0, &mk.1, Some(i));
                            index.insert(mk, i);
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        self.dirty.clear();
        self.relisted = false;
        rebuilt
    }
}

/// Where each object sits in the published [`ObjectSet`]'s vectors.
#[derive(Debug, Clone, Default)]
pub struct PublishIndex {
    services: HashMap<Key, usize>,
    endpoint_slices: HashMap<Key, usize>,
    nodes: HashMap<Key, usize>,
}

/// The three mirrors a snapshot is built from.
#[derive(Debug, Clone, Default)]
pub struct Mirrors {
    pub services: Mirror<Service>,
    pub endpoint_slices: Mirror<EndpointSlice>,
    pub nodes: Mirror<Node>,
}

impl Mirrors {
    /// Whether every type has completed its first list.
    pub fn synced(&self) -> bool {
        self.services.synced() && self.endpoint_slices.synced() && self.nodes.synced()
    }

    /// Updates the published snapshot in `slot` to the current objects and
    /// returns whether it did (`false` before every type's first list).
    ///
    /// Copy-on-write: when nobody else holds the `Arc` in `slot` (consumers
    /// have dropped the previous snapshot), only the objects changed since
    /// the last call are copied; otherwise the snapshot is copied once
    /// first. Objects are in no particular order ([`crate::compile`] sorts).
    pub fn publish_into(
        &mut self,
        slot: &mut Option<Arc<ObjectSet>>,
        index: &mut PublishIndex,
    ) -> bool {
        if !self.synced() {
            return false;
        }
        use crate::manifests::ObjKind;
        let full = slot.is_none();
        let set = Arc::make_mut(slot.get_or_insert_with(Default::default));
        // A list replaces a whole vector: the journal starts over (entries
        // of the other kinds made now are dropped with it: consumers
        // rescan everything).
        let mut j = std::mem::take(&mut set.journal);
        let mut rebuilt = self.services.sync_into(
            &mut set.services,
            &mut index.services,
            full,
            &mut j,
            ObjKind::Service,
        );
        rebuilt |= self.endpoint_slices.sync_into(
            &mut set.endpoint_slices,
            &mut index.endpoint_slices,
            full,
            &mut j,
            ObjKind::EndpointSlice,
        );
        rebuilt |= self.nodes.sync_into(
            &mut set.nodes,
            &mut index.nodes,
            full,
            &mut j,
            ObjKind::Node,
        );
        if rebuilt {
            j.restart();
        }
        set.journal = j;
        true
    }

    /// The current objects, or `None` before every type's first `InitDone`.
    pub fn snapshot(&self) -> Option<ObjectSet> {
        if !self.synced() {
            return None;
        }
        Some(ObjectSet {
            services: self.services.objects().cloned().collect(),
            endpoint_slices: self.endpoint_slices.objects().cloned().collect(),
            nodes: self.nodes.objects().cloned().collect(),
            journal: Default::default(),
        })
    }
}

/// Debounces publications (see the module doc).
#[derive(Debug, Clone)]
pub struct Coalescer {
    quiet: Duration,
    max: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Coalescer {
    /// `quiet`: wait this long after the last change; `max`: never wait
    /// longer than this after the first unpublished change.
    pub fn new(quiet: Duration, max: Duration) -> Coalescer {
        Coalescer {
            quiet,
            max: max.max(quiet),
            first: None,
            last: None,
        }
    }

    /// Records a change at `now`.
    pub fn note(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When to publish, if anything is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max))
    }

    /// Whether a publication is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// Marks everything pending as published.
    pub fn clear(&mut self) {
        self.first = None;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    fn names(m: &Mirror<Service>) -> Vec<String> {
        m.objects()
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_relist_replaces_the_set_only_at_init_done() {
        let mut m = Mirror::default();
        assert_eq!(m.handle(Event::Init), Change::None);
        assert_eq!(m.handle(Event::InitApply(svc("a"))), Change::None);
        assert!(!m.synced(), "half-listed is not synced");
        assert_eq!(m.handle(Event::InitDone), Change::Listed { relist: false });
        assert_eq!(names(&m), ["a"]);
        assert_eq!(m.handle(Event::Apply(svc("b"))), Change::Changed);
        // Relist without "a": until InitDone the old view stays.
        m.handle(Event::Init);
        m.handle(Event::InitApply(svc("b")));
        m.handle(Event::InitApply(svc("c")));
        assert_eq!(names(&m), ["a", "b"]);
        assert_eq!(m.handle(Event::InitDone), Change::Listed { relist: true });
        assert_eq!(names(&m), ["b", "c"]);
        assert_eq!(m.handle(Event::Delete(svc("b"))), Change::Changed);
        assert_eq!(names(&m), ["c"]);
    }

    #[test]
    fn no_snapshot_before_every_type_listed() {
        let mut ms = Mirrors::default();
        ms.services.handle(Event::Init);
        ms.services.handle(Event::InitApply(svc("a")));
        ms.services.handle(Event::InitDone);
        ms.endpoint_slices.handle(Event::Init);
        ms.endpoint_slices.handle(Event::InitDone);
        assert!(ms.snapshot().is_none());
        ms.nodes.handle(Event::Init);
        assert!(ms.snapshot().is_none());
        ms.nodes.handle(Event::InitDone);
        let s = ms.snapshot().expect("all listed");
        assert_eq!(s.services.len(), 1);
    }

    fn sorted(s: &ObjectSet) -> Vec<String> {
        let mut v: Vec<String> = s
            .services
            .iter()
            .map(|x| {
                format!(
                    "{}@{}",
                    x.metadata.name.clone().unwrap_or_default(),
                    x.metadata.resource_version.clone().unwrap_or_default()
                )
            })
            .collect();
        v.sort();
        v
    }

    fn svc_v(name: &str, v: &str) -> Service {
        let mut s = svc(name);
        s.metadata.resource_version = Some(v.into());
        s
    }

    #[test]
    fn incremental_publication_equals_a_full_snapshot() {
        let mut ms = Mirrors::default();
        let mut slot = None;
        let mut index = PublishIndex::default();
        assert!(!ms.publish_into(&mut slot, &mut index));
        for m in [&mut ms.endpoint_slices.lists, &mut ms.nodes.lists] {
            *m = 1;
        }
        ms.services.handle(Event::Init);
        for n in ["a", "b", "c", "d"] {
            ms.services.handle(Event::InitApply(svc_v(n, "1")));
        }
        ms.services.handle(Event::InitDone);
        let check = |ms: &Mirrors, slot: &Option<Arc<ObjectSet>>| {
            let want = sorted(&ms.snapshot().expect("synced"));
            assert_eq!(sorted(slot.as_deref().expect("published")), want);
        };
        assert!(ms.publish_into(&mut slot, &mut index));
        check(&ms, &slot);
        // Deletes (first, middle), an update and an add, then publish in place.
        ms.services.handle(Event::Delete(svc("a")));
        ms.services.handle(Event::Apply(svc_v("c", "2")));
        ms.services.handle(Event::Delete(svc("b")));
        ms.services.handle(Event::Apply(svc_v("e", "3")));
        ms.services.handle(Event::Apply(svc_v("a", "4")));
        let held = slot.clone();
        let before = sorted(held.as_deref().expect("published"));
        ms.publish_into(&mut slot, &mut index);
        check(&ms, &slot);
        assert_eq!(
            sorted(held.as_deref().expect("held")),
            before,
            "a snapshot someone holds never changes"
        );
        drop(held);
        ms.services.handle(Event::Delete(svc("d")));
        ms.publish_into(&mut slot, &mut index);
        check(&ms, &slot);
        // A relist rebuilds.
        ms.services.handle(Event::Init);
        ms.services.handle(Event::InitApply(svc_v("z", "9")));
        ms.services.handle(Event::InitDone);
        ms.publish_into(&mut slot, &mut index);
        check(&ms, &slot);
        assert_eq!(sorted(slot.as_deref().expect("published")), ["z@9"]);
    }

    #[test]
    fn coalescer_waits_for_quiet_but_not_past_max() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Coalescer::new(ms(5), ms(50));
        assert_eq!(c.deadline(), None);
        c.note(t0);
        assert_eq!(c.deadline(), Some(t0 + ms(5)));
        c.note(t0 + ms(3));
        assert_eq!(c.deadline(), Some(t0 + ms(8)));
        assert!(!c.due(t0 + ms(7)));
        assert!(c.due(t0 + ms(8)));
        // A steady stream of changes: published at first + max.
        for i in 0..20 {
            c.note(t0 + ms(4 * i));
        }
        assert_eq!(c.deadline(), Some(t0 + ms(50)));
        c.clear();
        assert_eq!(c.deadline(), None);
    }
}
