//! Guest linear memory access for host calls.
//!
//! A pointer the guest passes that does not fit its memory is answered with
//! `InvalidMemoryAccess`, as Envoy does, rather than trapping the host.

use crate::abi::status;
use crate::state::HostState;
use wasmtime::{Caller, Extern, Memory};

/// A host call's early exit with an ABI status code.
pub(crate) type Status = u32;

fn memory(caller: &mut Caller<'_, HostState>) -> Result<Memory, Status> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(status::INVALID_MEMORY_ACCESS),
    }
}

pub(crate) fn read(caller: &mut Caller<'_, HostState>, ptr: u32, len: u32) -> Result<Vec<u8>, Status> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mem = memory(caller)?;
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(status::INVALID_MEMORY_ACCESS)?;
    let bytes = mem.data(&*caller).get(start..end).map(<[u8]>::to_vec).ok_or(status::INVALID_MEMORY_ACCESS)?;
    caller.data_mut().vm.host_calls.bytes_from_guest += u64::from(len);
    Ok(bytes)
}

/// Reads a UTF-8 string argument (lossy: names in this ABI are text).
pub(crate) fn read_string(caller: &mut Caller<'_, HostState>, ptr: u32, len: u32) -> Result<String, Status> {
    read(caller, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

pub(crate) fn write(caller: &mut Caller<'_, HostState>, ptr: u32, bytes: &[u8]) -> Result<(), Status> {
    let mem = memory(caller)?;
    let start = ptr as usize;
    let end = start.checked_add(bytes.len()).ok_or(status::INVALID_MEMORY_ACCESS)?;
    mem.data_mut(&mut *caller).get_mut(start..end).ok_or(status::INVALID_MEMORY_ACCESS)?.copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn write_u32(caller: &mut Caller<'_, HostState>, ptr: u32, v: u32) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

pub(crate) fn write_u64(caller: &mut Caller<'_, HostState>, ptr: u32, v: u64) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Hands `data` to the guest the way the ABI says: memory from the guest's own allocator
/// (`proxy_on_memory_allocate`, or `malloc`), its address and length written to `ptr_ptr` and
/// `size_ptr`. The guest takes ownership (the SDK wraps it in a `Vec`). Empty data is returned
/// as a null pointer and size 0, without allocating, as Envoy does.
///
/// The outer `Err` is a trap inside the guest's allocator, which must propagate.
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    data: &[u8],
    ptr_ptr: u32,
    size_ptr: u32,
) -> wasmtime::Result<Result<(), Status>> {
    if data.is_empty() {
        return Ok(write_u32(caller, ptr_ptr, 0).and_then(|()| write_u32(caller, size_ptr, 0)));
    }
    let alloc = ["proxy_on_memory_allocate", "malloc"]
        .iter()
        .find_map(|name| caller.get_export(name).and_then(Extern::into_func));
    let Some(alloc) = alloc else {
        caller.data_mut().vm.violation("module exports neither proxy_on_memory_allocate nor malloc".into());
        return Ok(Err(status::INVALID_MEMORY_ACCESS));
    };
    let alloc = alloc.typed::<u32, u32>(&*caller)?;
    let ptr = alloc.call(&mut *caller, data.len() as u32)?;
    if ptr == 0 {
        return Ok(Err(status::INVALID_MEMORY_ACCESS));
    }
    caller.data_mut().vm.host_calls.bytes_to_guest += data.len() as u64;
    Ok(write(caller, ptr, data)
        .and_then(|()| write_u32(caller, ptr_ptr, ptr))
        .and_then(|()| write_u32(caller, size_ptr, data.len() as u32)))
}
