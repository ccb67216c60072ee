//! API objects in the agent's form, kept from one snapshot of the reflectors to the next, so a change
//! takes again only the objects it changed. An object is the one taken before when the reflector's store
//! still holds it (the same `Arc`: the store replaces only what the watch changed), or, after a re-list
//! (every `Arc` new), when it has the same resourceVersion, uid, namespace and name (the server gives a
//! changed object a new version).

use std::{collections::HashMap, sync::Arc};

use kube::Resource;

/// One kind's objects as last taken ([`Taken::take`]).
pub struct Taken<K, T> {
    /// By the address of the store's object; the entry holds the object, so no other takes its address
    /// while it is kept.
    by_object: HashMap<usize, Kept<K, T>>,
}

struct Kept<K, T> {
    object: Arc<K>,
    /// `None`: the object has no form of the agent's (a pod without a namespace or name).
    taken: Option<Arc<T>>,
}

impl<K, T> Default for Taken<K, T> {
    fn default() -> Self {
        Self { by_object: HashMap::new() }
    }
}

impl<K: Resource, T> Taken<K, T> {
    /// `objects` in the agent's form (those `take` gives one for, in order): the forms kept from the last
    /// call for objects it had, `take` for the others. Only these objects are kept for the next call.
    pub fn take(&mut self, objects: &[Arc<K>], take: impl Fn(&K) -> Option<T>) -> Vec<Arc<T>> {
        let mut by_version: Option<HashMap<&str, &Kept<K, T>>> = None;
        let mut next = HashMap::with_capacity(objects.len());
        let mut forms = Vec::with_capacity(objects.len());
        for object in objects {
            let address = Arc::as_ptr(object).addr();
            let kept = self.by_object.get(&address).map(|kept| kept.taken.clone()).or_else(|| {
                let version = object.meta().resource_version.as_deref()?;
                // Built once per call, and only when some object is not the store's same one.
                let by_version = by_version.get_or_insert_with(|| {
                    self.by_object
                        .values()
                        .filter_map(|kept| Some((kept.object.meta().resource_version.as_deref()?, kept)))
                        .collect()
                });
                let kept = by_version.get(version)?;
                let (before, now) = (kept.object.meta(), object.meta());
                ((&before.uid, &before.namespace, &before.name) == (&now.uid, &now.namespace, &now.name))
                    .then(|| kept.taken.clone())
            });
            let taken = kept.unwrap_or_else(|| take(object).map(Arc::new));
            if let Some(form) = &taken {
                forms.push(Arc::clone(form));
            }
            next.insert(address, Kept { object: Arc::clone(object), taken });
        }
        self.by_object = next;
        forms
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn object(name: &str, uid: &str, version: &str) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("x".into()),
                uid: Some(uid.into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    /// The form taken: the object's name, and how many objects were taken so far.
    fn take_counted(
        taken: &mut Taken<ConfigMap, String>,
        objects: &[Arc<ConfigMap>],
        count: &mut usize,
    ) -> Vec<String> {
        let counter = std::cell::Cell::new(*count);
        let forms = taken.take(objects, |o| {
            counter.set(counter.get() + 1);
            o.metadata.name.clone()
        });
        *count = counter.get();
        forms.iter().map(|f| (**f).clone()).collect()
    }

    #[test]
    fn only_objects_the_store_replaced_are_taken_again() {
        let mut taken = Taken::default();
        let (a, b) = (object("a", "u1", "10"), object("b", "u2", "11"));
        let first = taken.take(&[a.clone(), b.clone()], |o| o.metadata.name.clone());
        assert_eq!(first.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let same = taken.take(&[a.clone(), b], |_| -> Option<String> { panic!("taken again") });
        assert!(Arc::ptr_eq(&same[0], &first[0]) && Arc::ptr_eq(&same[1], &first[1]));
        // b changed (the store's new object, a new version): b taken again, a kept.
        let changed = taken.take(&[a.clone(), object("b", "u2", "12")], |o| o.metadata.name.clone().map(|n| n + "2"));
        assert!(Arc::ptr_eq(&changed[0], &first[0]), "a kept");
        assert_eq!(*changed[1], "b2");
        // b gone: no longer kept.
        let gone = taken.take(&[a], |_| -> Option<String> { panic!("a taken again") });
        assert_eq!(gone.len(), 1);
        assert_eq!(taken.by_object.len(), 1);
    }

    #[test]
    fn after_a_relist_the_same_versions_are_not_taken_again_but_a_new_uid_is() {
        let mut taken = Taken::default();
        let mut count = 0;
        take_counted(&mut taken, &[object("a", "u1", "10"), object("b", "u2", "11")], &mut count);
        // A re-list: new `Arc`s, the same versions; b deleted and created again under the same name with a
        // version its old one had (no server does that, but a uid must tell them apart), c new.
        let relisted = [object("a", "u1", "10"), object("b", "u9", "11"), object("c", "u3", "13")];
        assert_eq!(take_counted(&mut taken, &relisted, &mut count), ["a", "b", "c"]);
        assert_eq!(count, 4, "b (another uid) and c taken, a kept");
        // Objects without a form are kept as such, and not taken again.
        let mut none: Taken<ConfigMap, String> = Taken::default();
        let nameless = Arc::new(ConfigMap::default());
        assert!(none.take(std::slice::from_ref(&nameless), |o| o.metadata.name.clone()).is_empty());
        assert!(none.take(std::slice::from_ref(&nameless), |_| -> Option<String> { panic!("taken again") }).is_empty());
    }
}
