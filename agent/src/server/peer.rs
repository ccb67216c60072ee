//! Who is on the other end of a connection (SO_PEERCRED) and whether they may talk to the agent: root,
//! the agent's own user, or a member of the socket's group (primary group, or a supplementary group
//! read from `/proc/<pid>/status`, falling back to the user's groups from the group database).

use nix::unistd::{Gid, Uid, User};

use super::SocketGroup;

/// Credentials of a connected peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    /// 0 when the kernel did not report it.
    pub pid: i32,
}

/// The supplementary groups on a `/proc/<pid>/status` `Groups:` line; `None` when there is no such line.
pub fn parse_status_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(line.split_whitespace().filter_map(|g| g.parse().ok()).collect())
}

/// The peer's supplementary groups, from its process, else from its user's entry in the group database.
fn supplementary_groups(peer: &PeerCred) -> Vec<u32> {
    if peer.pid > 0
        && let Some(groups) =
            std::fs::read_to_string(format!("/proc/{}/status", peer.pid)).ok().as_deref().and_then(parse_status_groups)
    {
        return groups;
    }
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(peer.uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, Gid::from_raw(peer.gid))
        .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_default()
}

/// Whether `peer` may use the agent; `groups` yields its supplementary groups, asked only when needed.
pub fn allowed(peer: &PeerCred, own_uid: u32, group: Option<&SocketGroup>, groups: impl FnOnce() -> Vec<u32>) -> bool {
    if peer.uid == 0 || peer.uid == own_uid {
        return true;
    }
    let Some(group) = group else { return false };
    peer.gid == group.gid || groups().contains(&group.gid)
}

/// Checks a peer against the socket's group, reading its groups from the system.
pub fn check(peer: &PeerCred, own_uid: u32, group: Option<&SocketGroup>) -> bool {
    allowed(peer, own_uid, group, || supplementary_groups(peer))
}

/// The answer to a peer that may read but asked to change the agent: who it is, who may, what to do.
pub fn forbidden_message(peer: &PeerCred, admin: Option<&SocketGroup>) -> String {
    let who = match User::from_uid(Uid::from_raw(peer.uid)) {
        Ok(Some(user)) => format!("uid {} ({})", peer.uid, user.name),
        _ => format!("uid {}", peer.uid),
    };
    match admin {
        Some(g) => format!(
            "permission denied: changing the agent needs root or group `{}` (gid {}), and {who} is in neither: \
             run as root or join that group",
            g.name, g.gid
        ),
        None => format!(
            "permission denied: changing the agent needs root (the agent has no --admin-group), and {who} is not \
             root: run as root"
        ),
    }
}

/// The refusal a peer that is not allowed gets: who it is, what it lacks, what to do.
pub fn refusal_message(peer: &PeerCred, group: Option<&SocketGroup>, socket: &std::path::Path) -> String {
    let who = match User::from_uid(Uid::from_raw(peer.uid)) {
        Ok(Some(user)) => format!("uid {} ({})", peer.uid, user.name),
        _ => format!("uid {}", peer.uid),
    };
    match group {
        Some(g) => format!(
            "permission denied: {who} is neither root nor in group `{}` (gid {}) of {}: run as root or join the \
             group (usermod -aG {} $USER, then log in again)",
            g.name,
            g.gid,
            socket.display(),
            g.name
        ),
        None => format!(
            "permission denied: {who} is not root and the agent on {} has no socket group: run as root, or start \
             the agent with --socket-group GROUP and join that group",
            socket.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: SocketGroup = SocketGroup { name: String::new(), gid: 995 };

    fn peer(uid: u32, gid: u32) -> PeerCred {
        PeerCred { uid, gid, pid: 0 }
    }

    #[test]
    fn root_and_the_agents_own_user_are_always_allowed() {
        let never = || panic!("groups are not needed");
        assert!(allowed(&peer(0, 0), 0, None, never));
        assert!(allowed(&peer(1000, 1000), 1000, None, never));
    }

    #[test]
    fn group_membership_by_primary_or_supplementary_group() {
        assert!(allowed(&peer(1000, 995), 0, Some(&GROUP), Vec::new));
        assert!(allowed(&peer(1000, 1000), 0, Some(&GROUP), || vec![4, 995]));
        assert!(!allowed(&peer(1000, 1000), 0, Some(&GROUP), || vec![4, 27]));
        assert!(!allowed(&peer(1000, 995), 0, None, Vec::new), "no socket group: root only");
    }

    #[test]
    fn groups_line_of_proc_status() {
        let status = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 995 \nNgid:\t0\n";
        assert_eq!(parse_status_groups(status), Some(vec![4, 24, 995]));
        assert_eq!(parse_status_groups("Name:\tx\nGroups:\t\n"), Some(vec![]));
        assert_eq!(parse_status_groups("Name:\tx\n"), None);
    }

    #[test]
    fn refusal_names_the_group_and_what_to_do() {
        let group = SocketGroup { name: "flowgate".into(), gid: 995 };
        let msg = refusal_message(&peer(4242, 4242), Some(&group), std::path::Path::new("/run/x.sock"));
        assert_eq!(
            msg,
            "permission denied: uid 4242 is neither root nor in group `flowgate` (gid 995) of /run/x.sock: run as \
             root or join the group (usermod -aG flowgate $USER, then log in again)"
        );
    }
}
