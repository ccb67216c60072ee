//! Map operations aya 0.14 does not offer, made with the `bpf(2)` system call: reading a whole map
//! in batches (`BPF_MAP_LOOKUP_BATCH`, one call per [`CHUNK`] entries where aya's iterator makes two per
//! entry), and taking an entry out while reading what it held (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`), so a
//! collector can delete what it read as stale without deleting what a packet wrote since; and setting an
//! entry of a map aya only opens through its own wrappers ([`set`], for the perf event array whose buffers
//! `perf_buffer` opens). The conntrack
//! map holds hundreds of thousands of entries at a busy node, and its garbage collector, `status` and
//! `conntrack list` walk it: per-entry system calls made that walk the agent's largest cost per
//! connection.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

/// Entries asked for per batch call. A hash map's batch holds whole buckets, so a call may need more
/// room than this (`ENOSPC`); the chunk then grows.
pub const CHUNK: usize = 4096;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_ANY`: an update that inserts or replaces.
const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: an update that only inserts where no entry is.
const BPF_NOEXIST: u64 = 1;

/// `union bpf_attr` as the batch commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr` as the element commands read it.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Runs `bpf(cmd, attr)`; the error is errno's.
///
/// # Safety
/// `attr` must be the attribute struct of `cmd`, and every address in it valid for what `cmd` does with
/// it (read or written, of the map's key and value sizes) for the length of the call.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: the caller's promise; the kernel reads at most `size_of::<A>()` bytes of `attr` and writes
    // back only fields of it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, core::ptr::from_mut(attr), size_of::<A>() as libc::c_uint) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Calls `each` with every entry of the hash map `map` (keys `K`, values `V`, which must be the map's
/// own sizes), read in batches of about [`CHUNK`]. The kernel goes on changing the map meanwhile: an entry
/// added or deleted during the walk may or may not be seen, every other one is seen once.
pub fn for_each<K: Pod + Default, V: Pod + Default>(map: &MapData, mut each: impl FnMut(&K, &V)) -> io::Result<()> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut chunk = CHUNK;
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // A hash map's position is a bucket index.
    let (mut position, mut next): (u32, u32) = (0, 0);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { core::ptr::from_ref(&position) as u64 },
            out_batch: core::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the batch command's attributes; `keys` and `values` hold `count` elements of the map's
        // key and value types, the positions are u32 as a hash map's are, all alive across the call.
        let result = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let done = match result {
            Ok(()) => false,
            // The end of the map; `count` says what this last call still filled.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more than the room given: grow and ask again from the same place.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < (1 << 20) => {
                chunk *= 4;
                keys.resize(chunk, K::default());
                values.resize(chunk, V::default());
                continue;
            }
            Err(e) => return Err(e),
        };
        let filled = (attr.count as usize).min(chunk);
        keys[..filled].iter().zip(&values[..filled]).for_each(|(k, v)| each(k, v));
        if done {
            return Ok(());
        }
        position = next;
        first = false;
    }
}

/// Deletes `key` from the hash map `map` and returns the value it held (`None`: no such entry). Key and
/// value types must be the map's own sizes.
pub fn take<K: Pod, V: Pod + Default>(map: &MapData, key: &K) -> io::Result<Option<V>> {
    let mut value = V::default();
    let mut attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        key: core::ptr::from_ref(key) as u64,
        value: core::ptr::from_mut(&mut value) as u64,
        ..ElemAttr::default()
    };
    // SAFETY: the element command's attributes: `key` and `value` are one key and one value of the map's
    // types, alive across the call (the kernel reads the key and writes the value).
    match unsafe { bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) } {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Inserts `key` with `value` into the hash map `map` unless the key has an entry already; returns
/// whether it did. Key and value types must be the map's own sizes.
pub fn insert_new<K: Pod, V: Pod>(map: &MapData, key: &K, value: &V) -> io::Result<bool> {
    match update(map, key, value, BPF_NOEXIST) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets `key` to `value` in `map`, inserting or replacing. Key and value types must be the map's own sizes.
pub fn set<K: Pod, V: Pod>(map: &MapData, key: &K, value: &V) -> io::Result<()> {
    update(map, key, value, BPF_ANY)
}

/// `BPF_MAP_UPDATE_ELEM` of `key` and `value` with `flags` (`BPF_ANY`, `BPF_NOEXIST`).
fn update<K: Pod, V: Pod>(map: &MapData, key: &K, value: &V, flags: u64) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        key: core::ptr::from_ref(key) as u64,
        value: core::ptr::from_ref(value) as u64,
        flags,
        ..ElemAttr::default()
    };
    // SAFETY: the element command's attributes: `key` and `value` are one key and one value of the map's
    // types, alive across the call (the kernel only reads them).
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }
}
