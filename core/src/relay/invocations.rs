//! Client results: invocations an app server sent to a client and awaits the answer of,
//! indexed by the client that owes the answer and by the server connection that asked, so
//! that either one going is no scan.

use std::collections::{BTreeMap, BTreeSet};

use super::ConnHandle;

/// Client invocations awaiting their results, at most (each is also dropped when its client
/// goes).
const MAX_PENDING: usize = 65_536;

/// One awaited answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    /// The client that owes it.
    pub(crate) client: ConnHandle,
    /// The server connection that asked.
    pub(crate) caller: ConnHandle,
}

#[derive(Debug, Default)]
pub(crate) struct Invocations {
    by_id: BTreeMap<String, Pending>,
    by_client: BTreeSet<(ConnHandle, String)>,
    by_caller: BTreeSet<(ConnHandle, String)>,
}

impl Invocations {
    /// Whether the table is full: no invocation is taken.
    pub(crate) fn is_full(&self) -> bool {
        self.by_id.len() >= MAX_PENDING
    }

    /// Records an invocation (a repeated id replaces the earlier one).
    pub(crate) fn insert(&mut self, id: String, pending: Pending) {
        self.unindex(&id);
        self.by_client.insert((pending.client, id.clone()));
        self.by_caller.insert((pending.caller, id.clone()));
        self.by_id.insert(id, pending);
    }

    /// The invocation an answer would be for.
    pub(crate) fn get(&self, id: &str) -> Option<Pending> {
        self.by_id.get(id).copied()
    }

    /// Takes the invocation an answer is for.
    pub(crate) fn complete(&mut self, id: &str) -> Option<Pending> {
        self.unindex(id)
    }

    fn unindex(&mut self, id: &str) -> Option<Pending> {
        let pending = self.by_id.remove(id)?;
        self.by_client.remove(&(pending.client, id.to_owned()));
        self.by_caller.remove(&(pending.caller, id.to_owned()));
        Some(pending)
    }

    /// Takes every invocation a client owes (it is gone): their ids and callers.
    pub(crate) fn take_owed_by(&mut self, client: ConnHandle) -> Vec<(String, ConnHandle)> {
        let ids = take_keyed(&mut self.by_client, client);
        ids.into_iter()
            .filter_map(|id| {
                let pending = self.by_id.remove(&id)?;
                self.by_caller.remove(&(pending.caller, id.clone()));
                Some((id, pending.caller))
            })
            .collect()
    }

    /// Forgets every invocation a server connection asked (it is gone: nobody awaits them).
    pub(crate) fn forget_asked_by(&mut self, caller: ConnHandle) {
        for id in take_keyed(&mut self.by_caller, caller) {
            if let Some(pending) = self.by_id.remove(&id) {
                self.by_client.remove(&(pending.client, id));
            }
        }
    }
}

/// Removes and returns the ids indexed under `conn`.
fn take_keyed(index: &mut BTreeSet<(ConnHandle, String)>, conn: ConnHandle) -> Vec<String> {
    let ids: Vec<String> = index
        .range((conn, String::new())..)
        .take_while(|(c, _)| *c == conn)
        .map(|(_, id)| id.clone())
        .collect();
    for id in &ids {
        index.remove(&(conn, id.clone()));
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_side_going_takes_its_invocations_only() {
        let mut t = Invocations::default();
        let (c1, c2, s1, s2) = (ConnHandle(1), ConnHandle(2), ConnHandle(10), ConnHandle(11));
        let p = |client, caller| Pending { client, caller };
        t.insert("a".into(), p(c1, s1));
        t.insert("b".into(), p(c1, s2));
        t.insert("c".into(), p(c2, s1));
        assert_eq!(t.take_owed_by(c1), vec![("a".into(), s1), ("b".into(), s2)]);
        assert_eq!(t.complete("a"), None);
        t.forget_asked_by(s1);
        assert_eq!(t.complete("c"), None);
        assert!(t.by_id.is_empty() && t.by_client.is_empty() && t.by_caller.is_empty());
        // A repeated id replaces the earlier entry everywhere.
        t.insert("d".into(), p(c1, s1));
        t.insert("d".into(), p(c2, s2));
        assert!(t.take_owed_by(c1).is_empty());
        assert_eq!(t.complete("d"), Some(p(c2, s2)));
    }
}
