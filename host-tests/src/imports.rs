//! The `env` host functions of proxy-wasm ABI 0.2.1: every import proxy-wasm-rust-sdk 0.2.5
//! can declare. Semantics follow Envoy's implementation where the ABI leaves room.
//!
//! Each function answers with an ABI status code. An `Err` from a function is a trap (only
//! when the guest's allocator traps while the host hands memory back).

use crate::abi::{self, status, BufferType, LogLevel, MapType, MetricKind};
use crate::memory::{self, return_bytes, Status};
use crate::state::{ForeignCall, Headers, HostState, HttpCall, LocalReply, LogEntry, Metric, PropertySet, VmState};
use wasmtime::{Caller, Linker};

type Flow = wasmtime::Result<Result<(), Status>>;
type Cx<'a> = Caller<'a, HostState>;

/// Unwraps a `Result<T, Status>` or returns the status from the host call.
macro_rules! st {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return Ok(Err(s)),
        }
    };
}

fn code(r: Flow) -> wasmtime::Result<u32> {
    r.map(|r| match r {
        Ok(()) => status::OK,
        Err(s) => s,
    })
}

/// Registers `env.$name`, counting its calls in `HostCalls::by_name` before running `$body`
/// (the closure's first parameter is the caller).
macro_rules! host_fn {
    ($linker:ident, $name:literal, |$c:ident $(, $a:ident : $t:ty)*| $body:expr) => {
        #[allow(unused_mut)]
        $linker.func_wrap("env", $name, |mut $c: Cx<'_> $(, $a: $t)*| {
            *$c.data_mut().vm.host_calls.by_name.entry($name).or_insert(0) += 1;
            $body
        })?;
    };
}

/// Registers the host functions under `env`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Logging, time, ticks.
    host_fn!(linker, "proxy_log", |c, level: u32, p: u32, n: u32| code(log(&mut c, level, p, n)));
    host_fn!(linker, "proxy_get_log_level", |c, ret: u32| {
        let level = c.data().vm.log_level as u32;
        code(Ok(memory::write_u32(&mut c, ret, level)))
    });
    host_fn!(linker, "proxy_get_current_time_nanoseconds", |c, ret: u32| {
        let now = c.data().vm.clock_ns;
        code(Ok(memory::write_u64(&mut c, ret, now)))
    });
    host_fn!(linker, "proxy_set_tick_period_milliseconds", |c, period: u32| {
        c.data_mut().vm.tick_period_ms = period;
        Ok::<u32, wasmtime::Error>(status::OK)
    });

    // Buffers.
    host_fn!(linker, "proxy_get_buffer_bytes", |c, ty: u32, start: u32, max: u32, pp: u32, sp: u32| {
        code(get_buffer_bytes(&mut c, ty, start, max, pp, sp))
    });
    host_fn!(linker, "proxy_set_buffer_bytes", |c, ty: u32, start: u32, size: u32, p: u32, n: u32| {
        code(set_buffer_bytes(&mut c, ty, start, size, p, n))
    });

    // Header maps.
    host_fn!(linker, "proxy_get_header_map_pairs", |c, ty: u32, pp: u32, sp: u32| {
        code(get_header_map_pairs(&mut c, ty, pp, sp))
    });
    host_fn!(linker, "proxy_set_header_map_pairs", |c, ty: u32, p: u32, n: u32| {
        code(set_header_map_pairs(&mut c, ty, p, n))
    });
    host_fn!(linker, "proxy_get_header_map_value", |c, ty: u32, kp: u32, kn: u32, pp: u32, sp: u32| {
        code(get_header_map_value(&mut c, ty, kp, kn, pp, sp))
    });
    host_fn!(linker, "proxy_replace_header_map_value", |c, ty: u32, kp: u32, kn: u32, vp: u32, vn: u32| {
        code(edit_header(&mut c, ty, kp, kn, Some((vp, vn)), Edit::Replace))
    });
    host_fn!(linker, "proxy_add_header_map_value", |c, ty: u32, kp: u32, kn: u32, vp: u32, vn: u32| {
        code(edit_header(&mut c, ty, kp, kn, Some((vp, vn)), Edit::Add))
    });
    host_fn!(linker, "proxy_remove_header_map_value", |c, ty: u32, kp: u32, kn: u32| {
        code(edit_header(&mut c, ty, kp, kn, None, Edit::Remove))
    });

    // Properties.
    host_fn!(linker, "proxy_get_property", |c, p: u32, n: u32, pp: u32, sp: u32| {
        code(get_property(&mut c, p, n, pp, sp))
    });
    host_fn!(linker, "proxy_set_property", |c, p: u32, n: u32, vp: u32, vn: u32| {
        code(set_property(&mut c, p, n, vp, vn))
    });

    // Shared data and queues.
    host_fn!(linker, "proxy_get_shared_data", |c, kp: u32, kn: u32, pp: u32, sp: u32, casp: u32| {
        code(get_shared_data(&mut c, kp, kn, pp, sp, casp))
    });
    host_fn!(linker, "proxy_set_shared_data", |c, kp: u32, kn: u32, vp: u32, vn: u32, cas: u32| {
        code(set_shared_data(&mut c, kp, kn, vp, vn, cas))
    });
    host_fn!(linker, "proxy_register_shared_queue", |c, p: u32, n: u32, ret: u32| {
        code(register_queue(&mut c, None, (p, n), ret))
    });
    host_fn!(linker, "proxy_resolve_shared_queue", |c, vp: u32, vn: u32, p: u32, n: u32, ret: u32| {
        code(register_queue(&mut c, Some((vp, vn)), (p, n), ret))
    });
    host_fn!(linker, "proxy_dequeue_shared_queue", |c, id: u32, pp: u32, sp: u32| code(dequeue(&mut c, id, pp, sp)));
    host_fn!(linker, "proxy_enqueue_shared_queue", |c, id: u32, p: u32, n: u32| code(enqueue(&mut c, id, p, n)));

    // Stream control.
    host_fn!(linker, "proxy_continue_stream", |c, ty: u32| Ok::<u32, wasmtime::Error>(continue_stream(&mut c, ty)));
    host_fn!(linker, "proxy_close_stream", |c, _ty: u32| {
        let vm = &mut c.data_mut().vm;
        Ok::<u32, wasmtime::Error>(match vm.active_stream() {
            Some(s) => {
                s.closed = true;
                status::OK
            }
            None => status::NOT_FOUND,
        })
    });
    host_fn!(linker, "proxy_send_local_response", |c,
                                                   code_: u32,
                                                   dp: u32,
                                                   dn: u32,
                                                   bp: u32,
                                                   bn: u32,
                                                   hp: u32,
                                                   hn: u32,
                                                   grpc: i32| {
        code(send_local_response(&mut c, code_, (dp, dn), (bp, bn), (hp, hn), grpc))
    });

    // Callouts.
    host_fn!(linker, "proxy_http_call", |c,
                                         up: u32,
                                         un: u32,
                                         hp: u32,
                                         hn: u32,
                                         bp: u32,
                                         bn: u32,
                                         tp: u32,
                                         tn: u32,
                                         timeout: u32,
                                         ret: u32| {
        code(http_call(&mut c, (up, un), (hp, hn), (bp, bn), (tp, tn), timeout, ret))
    });
    // gRPC is not part of this filter's world: answer "unimplemented".
    host_fn!(linker, "proxy_grpc_call", |c,
                                         _a: u32,
                                         _b: u32,
                                         _c2: u32,
                                         _d: u32,
                                         _e: u32,
                                         _f: u32,
                                         _g: u32,
                                         _h: u32,
                                         _i: u32,
                                         _j: u32,
                                         _k: u32,
                                         _l: u32| {
        Ok::<u32, wasmtime::Error>(status::UNIMPLEMENTED)
    });
    host_fn!(linker, "proxy_grpc_stream", |c,
                                           _a: u32,
                                           _b: u32,
                                           _c2: u32,
                                           _d: u32,
                                           _e: u32,
                                           _f: u32,
                                           _g: u32,
                                           _h: u32,
                                           _i: u32| {
        Ok::<u32, wasmtime::Error>(status::UNIMPLEMENTED)
    });
    host_fn!(linker, "proxy_grpc_send", |c, _a: u32, _b: u32, _c2: u32, _d: u32| {
        Ok::<u32, wasmtime::Error>(status::UNIMPLEMENTED)
    });
    host_fn!(linker, "proxy_grpc_cancel", |c, _a: u32| Ok::<u32, wasmtime::Error>(status::UNIMPLEMENTED));
    host_fn!(linker, "proxy_grpc_close", |c, _a: u32| Ok::<u32, wasmtime::Error>(status::UNIMPLEMENTED));
    host_fn!(linker, "proxy_get_status", |c, codep: u32, pp: u32, sp: u32| {
        let r = memory::write_u32(&mut c, codep, 0)
            .and_then(|()| memory::write_u32(&mut c, pp, 0))
            .and_then(|()| memory::write_u32(&mut c, sp, 0));
        code(Ok(r))
    });

    // Contexts, foreign functions, done.
    host_fn!(linker, "proxy_set_effective_context", |c, id: u32| {
        let vm = &mut c.data_mut().vm;
        Ok::<u32, wasmtime::Error>(if id == vm.root_id || vm.streams.contains_key(&id) {
            vm.active_context = id;
            status::OK
        } else {
            status::BAD_ARGUMENT
        })
    });
    host_fn!(linker, "proxy_call_foreign_function", |c, np: u32, nn: u32, ap: u32, an: u32, pp: u32, sp: u32| {
        code(foreign_function(&mut c, (np, nn), (ap, an), pp, sp))
    });
    host_fn!(linker, "proxy_done", |c| {
        c.data_mut().vm.done_calls += 1;
        Ok::<u32, wasmtime::Error>(status::OK)
    });

    // Metrics.
    host_fn!(linker, "proxy_define_metric", |c, ty: u32, p: u32, n: u32, ret: u32| {
        code(define_metric(&mut c, ty, p, n, ret))
    });
    host_fn!(linker, "proxy_increment_metric", |c, id: u32, offset: i64| {
        Ok::<u32, wasmtime::Error>(increment_metric(&mut c.data_mut().vm, id, offset))
    });
    host_fn!(linker, "proxy_record_metric", |c, id: u32, value: u64| {
        Ok::<u32, wasmtime::Error>(record_metric(&mut c.data_mut().vm, id, value))
    });
    host_fn!(linker, "proxy_get_metric", |c, id: u32, ret: u32| {
        let value = match c.data().vm.metrics.by_id.get(id as usize) {
            None => return code(Ok(Err(status::NOT_FOUND))),
            Some(m) if m.kind == MetricKind::Histogram => return code(Ok(Err(status::BAD_ARGUMENT))),
            Some(m) => m.value as u64,
        };
        code(Ok(memory::write_u64(&mut c, ret, value)))
    });
    Ok(())
}

fn log(c: &mut Cx<'_>, level: u32, p: u32, n: u32) -> Flow {
    let message = st!(memory::read_string(c, p, n));
    let level = st!(LogLevel::from_u32(level).ok_or(status::BAD_ARGUMENT));
    let vm = &mut c.data_mut().vm;
    if vm.echo_logs {
        eprintln!("[wasm {level:?} ctx={}] {message}", vm.active_context);
    }
    let context_id = vm.active_context;
    vm.logs.push(LogEntry { level, context_id, message });
    Ok(Ok(()))
}

/// The buffer of `ty` as the active context sees it. `Err(NOT_FOUND)` when it does not exist.
fn buffer(vm: &mut VmState, ty: BufferType) -> Result<&mut Vec<u8>, Status> {
    match ty {
        BufferType::VmConfiguration => Ok(&mut vm.vm_config),
        BufferType::PluginConfiguration => Ok(&mut vm.plugin_config),
        BufferType::HttpCallResponseBody => vm.call_response.as_mut().map(|r| &mut r.body).ok_or(status::NOT_FOUND),
        BufferType::HttpRequestBody => vm.active_stream().map(|s| &mut s.request.buffered).ok_or(status::NOT_FOUND),
        BufferType::HttpResponseBody => vm.active_stream().map(|s| &mut s.response.buffered).ok_or(status::NOT_FOUND),
        BufferType::Unsupported => Err(status::NOT_FOUND),
    }
}

fn get_buffer_bytes(c: &mut Cx<'_>, ty: u32, start: u32, max: u32, pp: u32, sp: u32) -> Flow {
    let ty = st!(BufferType::from_u32(ty).ok_or(status::BAD_ARGUMENT));
    let buf = st!(buffer(&mut c.data_mut().vm, ty));
    let (start, len) = (start as usize, buf.len());
    if start > len {
        return Ok(Err(status::BAD_ARGUMENT));
    }
    let end = start.saturating_add(max as usize).min(len);
    if end == start {
        // Envoy answers Ok without writing anything: the SDK then sees no data.
        return Ok(Ok(()));
    }
    let data = buf[start..end].to_vec();
    return_bytes(c, &data, pp, sp)
}

/// Envoy's `Buffer::copyFrom`: `start == 0` replaces the first `size` bytes with the data,
/// `start >= length` appends, anything else is a bad argument.
fn set_buffer_bytes(c: &mut Cx<'_>, ty: u32, start: u32, size: u32, p: u32, n: u32) -> Flow {
    let data = st!(memory::read(c, p, n));
    let ty = st!(BufferType::from_u32(ty).ok_or(status::BAD_ARGUMENT));
    if !matches!(ty, BufferType::HttpRequestBody | BufferType::HttpResponseBody) {
        c.data_mut().vm.violation(format!("set_buffer_bytes on read-only buffer {ty:?}"));
        return Ok(Err(status::BAD_ARGUMENT));
    }
    let vm = &mut c.data_mut().vm;
    let buf = st!(buffer(vm, ty));
    let (start, size) = (start as usize, size as usize);
    if start == 0 {
        // The new buffer from two copies (`Vec::splice` moves byte by byte in unoptimized builds,
        // which made large body rewrites slow in the harness).
        let drained = size.min(buf.len());
        let mut new = Vec::with_capacity(data.len() + buf.len() - drained);
        new.extend_from_slice(&data);
        new.extend_from_slice(&buf[drained..]);
        *buf = new;
    } else if start >= buf.len() {
        buf.extend_from_slice(&data);
    } else {
        let len = buf.len();
        vm.violation(format!(
            "set_buffer_bytes({ty:?}, start={start}, size={size}) inside a {len}-byte buffer: Envoy only replaces from 0 or appends"
        ));
        return Ok(Err(status::BAD_ARGUMENT));
    }
    Ok(Ok(()))
}

/// Which header map `ty` names for the active context, and whether it already left the filter
/// (changes then have no effect in Envoy).
fn header_map(vm: &mut VmState, ty: MapType) -> Result<(&mut Headers, bool), Status> {
    if let MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers = ty {
        let r = vm.call_response.as_mut().ok_or(status::NOT_FOUND)?;
        return Ok(match ty {
            MapType::HttpCallResponseHeaders => (&mut r.headers, true),
            _ => (&mut r.trailers, true),
        });
    }
    let s = vm.active_stream().ok_or(status::NOT_FOUND)?;
    match ty {
        MapType::RequestHeaders if s.request.headers_seen => {
            Ok((&mut s.request.headers, s.request.forwarded_headers.is_some()))
        }
        MapType::RequestTrailers if s.request.trailers_seen => {
            Ok((&mut s.request.trailers, s.request.forwarded_trailers.is_some()))
        }
        MapType::ResponseHeaders if s.response.headers_seen => {
            Ok((&mut s.response.headers, s.response.forwarded_headers.is_some()))
        }
        MapType::ResponseTrailers if s.response.trailers_seen => {
            Ok((&mut s.response.trailers, s.response.forwarded_trailers.is_some()))
        }
        _ => Err(status::NOT_FOUND),
    }
}

fn get_header_map_pairs(c: &mut Cx<'_>, ty: u32, pp: u32, sp: u32) -> Flow {
    let ty = st!(MapType::from_u32(ty).ok_or(status::BAD_ARGUMENT));
    let (map, _) = st!(header_map(&mut c.data_mut().vm, ty));
    let bytes = abi::serialize_pairs(map.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
    return_bytes(c, &bytes, pp, sp)
}

fn set_header_map_pairs(c: &mut Cx<'_>, ty: u32, p: u32, n: u32) -> Flow {
    let raw = st!(memory::read(c, p, n));
    let ty = st!(MapType::from_u32(ty).ok_or(status::BAD_ARGUMENT));
    let Some(pairs) = abi::deserialize_pairs(&raw) else {
        c.data_mut().vm.violation("set_header_map_pairs: malformed serialized map".into());
        return Ok(Err(status::BAD_ARGUMENT));
    };
    let mut problems = Vec::new();
    let mut new = Headers::new();
    for (k, v) in &pairs {
        let (k, v) = (text(k, &mut problems), text(v, &mut problems));
        check_header(&k, &v, &mut problems);
        new.add(&k, &v);
    }
    let vm = &mut c.data_mut().vm;
    let (map, forwarded) = st!(header_map(vm, ty));
    *map = new;
    if forwarded {
        problems.push(format!("set_header_map_pairs({ty:?}) after the map was forwarded"));
    }
    for p in problems {
        vm.violation(p);
    }
    Ok(Ok(()))
}

fn get_header_map_value(c: &mut Cx<'_>, ty: u32, kp: u32, kn: u32, pp: u32, sp: u32) -> Flow {
    let key = st!(memory::read_string(c, kp, kn));
    let ty = st!(MapType::from_u32(ty).ok_or(status::BAD_ARGUMENT));
    let (map, _) = st!(header_map(&mut c.data_mut().vm, ty));
    let value = st!(map.get(&key).map(|v| v.as_bytes().to_vec()).ok_or(status::NOT_FOUND));
    return_bytes(c, &value, pp, sp)
}

#[derive(Clone, Copy, Debug)]
enum Edit {
    Replace,
    Add,
    Remove,
}

fn edit_header(c: &mut Cx<'_>, ty: u32, kp: u32, kn: u32, value: Option<(u32, u32)>, edit: Edit) -> Flow {
    let mut problems = Vec::new();
    let key = st!(memory::read(c, kp, kn));
    let key = text(&key, &mut problems);
    let value = match value {
        Some((vp, vn)) => {
            let v = st!(memory::read(c, vp, vn));
            text(&v, &mut problems)
        }
        None => String::new(),
    };
    let ty = st!(MapType::from_u32(ty).ok_or(status::BAD_ARGUMENT));
    if !matches!(edit, Edit::Remove) {
        check_header(&key, &value, &mut problems);
    }
    let vm = &mut c.data_mut().vm;
    let (map, forwarded) = st!(header_map(vm, ty));
    match edit {
        Edit::Replace => map.replace(&key, &value),
        Edit::Add => map.add(&key, &value),
        Edit::Remove => map.remove(&key),
    }
    if forwarded {
        problems.push(format!("{edit:?} of {ty:?} `{key}` after the map was forwarded (no effect in Envoy)"));
    }
    for p in problems {
        vm.violation(p);
    }
    Ok(Ok(()))
}

/// Header text from the guest; invalid UTF-8 is kept lossily and reported.
fn text(bytes: &[u8], problems: &mut Vec<String>) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            problems.push(format!("header bytes are not UTF-8: {bytes:?}"));
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
}

/// What Envoy's header validation would refuse (and what would allow header injection).
fn check_header(key: &str, value: &str, problems: &mut Vec<String>) {
    if key.is_empty() || key.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'"' || b == b',') {
        problems.push(format!("invalid header name {key:?}"));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        problems.push(format!("invalid value for header `{key}`: {value:?}"));
    }
}

fn get_property(c: &mut Cx<'_>, p: u32, n: u32, pp: u32, sp: u32) -> Flow {
    let path = abi::parse_property_path(&st!(memory::read(c, p, n)));
    let vm = &mut c.data_mut().vm;
    let active = vm.active_context;
    let found = match vm.streams.get(&active) {
        Some(s) => s.properties.get(&path).or_else(|| s.host_properties.get(&path)),
        None => vm.root_properties.get(&path),
    }
    .or_else(|| vm.host_properties.get(&path))
    .cloned();
    let value = st!(found.ok_or(status::NOT_FOUND));
    return_bytes(c, &value, pp, sp)
}

fn set_property(c: &mut Cx<'_>, p: u32, n: u32, vp: u32, vn: u32) -> Flow {
    let path = abi::parse_property_path(&st!(memory::read(c, p, n)));
    let value = st!(memory::read(c, vp, vn));
    let vm = &mut c.data_mut().vm;
    let context_id = vm.active_context;
    vm.property_sets.push(PropertySet { context_id, path: path.clone(), value: value.clone() });
    match vm.streams.get_mut(&context_id) {
        Some(s) => s.properties.insert(path, value),
        None => vm.root_properties.insert(path, value),
    };
    Ok(Ok(()))
}

fn get_shared_data(c: &mut Cx<'_>, kp: u32, kn: u32, pp: u32, sp: u32, casp: u32) -> Flow {
    let key = st!(memory::read_string(c, kp, kn));
    let entry = {
        let shared = c.data().vm.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.data.get(&key).cloned()
    };
    let (value, cas) = st!(entry.ok_or(status::NOT_FOUND));
    st!(return_bytes(c, &value, pp, sp)?);
    Ok(memory::write_u32(c, casp, cas))
}

fn set_shared_data(c: &mut Cx<'_>, kp: u32, kn: u32, vp: u32, vn: u32, cas: u32) -> Flow {
    let key = st!(memory::read_string(c, kp, kn));
    let value = st!(memory::read(c, vp, vn));
    let mut shared = c.data().vm.shared.lock().unwrap_or_else(|e| e.into_inner());
    let next_cas = match shared.data.get(&key) {
        Some((_, current)) if cas != 0 && cas != *current => return Ok(Err(status::CAS_MISMATCH)),
        Some((_, current)) => current.wrapping_add(1).max(1),
        None => 1,
    };
    shared.data.insert(key, (value, next_cas));
    Ok(Ok(()))
}

/// `vm_id == None` registers (creating); `Some` resolves an existing queue.
fn register_queue(c: &mut Cx<'_>, vm_id: Option<(u32, u32)>, name: (u32, u32), ret: u32) -> Flow {
    let resolve = vm_id.is_some();
    let vm_id = match vm_id {
        Some((p, n)) => st!(memory::read_string(c, p, n)),
        None => String::new(),
    };
    let name = st!(memory::read_string(c, name.0, name.1));
    let id = {
        let mut shared = c.data().vm.shared.lock().unwrap_or_else(|e| e.into_inner());
        let key = (vm_id, name);
        match shared.queue_ids.get(&key) {
            Some(id) => *id,
            None if resolve => return Ok(Err(status::NOT_FOUND)),
            None => {
                let id = shared.queues.len() as u32;
                shared.queues.push(Default::default());
                shared.queue_ids.insert(key, id);
                id
            }
        }
    };
    Ok(memory::write_u32(c, ret, id))
}

fn dequeue(c: &mut Cx<'_>, id: u32, pp: u32, sp: u32) -> Flow {
    let item = {
        let mut shared = c.data().vm.shared.lock().unwrap_or_else(|e| e.into_inner());
        let q = st!(shared.queues.get_mut(id as usize).ok_or(status::NOT_FOUND));
        st!(q.pop_front().ok_or(status::EMPTY))
    };
    return_bytes(c, &item, pp, sp)
}

fn enqueue(c: &mut Cx<'_>, id: u32, p: u32, n: u32) -> Flow {
    let value = st!(memory::read(c, p, n));
    let mut shared = c.data().vm.shared.lock().unwrap_or_else(|e| e.into_inner());
    let q = st!(shared.queues.get_mut(id as usize).ok_or(status::NOT_FOUND));
    q.push_back(value);
    Ok(Ok(()))
}

/// Envoy defers a resume until the current VM call returns; so does the scenario driver,
/// which looks at `continue_requested` after every call.
fn continue_stream(c: &mut Cx<'_>, ty: u32) -> u32 {
    let vm = &mut c.data_mut().vm;
    let Some(s) = vm.active_stream() else {
        return status::NOT_FOUND;
    };
    match ty {
        0 => s.request.continue_requested = true,
        1 => s.response.continue_requested = true,
        _ => return status::BAD_ARGUMENT,
    }
    status::OK
}

fn send_local_response(
    c: &mut Cx<'_>,
    status_code: u32,
    details: (u32, u32),
    body: (u32, u32),
    headers: (u32, u32),
    grpc_status: i32,
) -> Flow {
    let details = st!(memory::read_string(c, details.0, details.1));
    let body = st!(memory::read(c, body.0, body.1));
    let raw = st!(memory::read(c, headers.0, headers.1));
    let mut problems = Vec::new();
    let mut map = Headers::new();
    match abi::deserialize_pairs(&raw) {
        Some(pairs) => {
            for (k, v) in &pairs {
                let (k, v) = (text(k, &mut problems), text(v, &mut problems));
                check_header(&k, &v, &mut problems);
                map.add(&k, &v);
            }
        }
        None => problems.push("send_local_response: malformed header map".into()),
    }
    let vm = &mut c.data_mut().vm;
    let Some(s) = vm.active_stream() else {
        vm.violation("send_local_response outside of an HTTP stream".into());
        return Ok(Err(status::NOT_FOUND));
    };
    if !s.local_replies.is_empty() {
        problems.push("a second send_local_response on the same stream".into());
    }
    if s.response.forwarded_headers.is_some() {
        problems.push("send_local_response after response headers were sent downstream".into());
    }
    s.local_replies.push(LocalReply { status: status_code, headers: map, body, details, grpc_status });
    for p in problems {
        vm.violation(p);
    }
    Ok(Ok(()))
}

fn http_call(
    c: &mut Cx<'_>,
    upstream: (u32, u32),
    headers: (u32, u32),
    body: (u32, u32),
    trailers: (u32, u32),
    timeout_ms: u32,
    ret: u32,
) -> Flow {
    let upstream = st!(memory::read_string(c, upstream.0, upstream.1));
    let headers = st!(memory::read(c, headers.0, headers.1));
    let body = st!(memory::read(c, body.0, body.1));
    let trailers = st!(memory::read(c, trailers.0, trailers.1));
    let to_map = |raw: &[u8]| -> Option<Headers> {
        let mut m = Headers::new();
        for (k, v) in abi::deserialize_pairs(raw)? {
            m.add(&String::from_utf8_lossy(&k), &String::from_utf8_lossy(&v));
        }
        Some(m)
    };
    let (Some(headers), Some(trailers)) = (to_map(&headers), to_map(&trailers)) else {
        return Ok(Err(status::BAD_ARGUMENT));
    };
    let vm = &mut c.data_mut().vm;
    if vm.http_call_status != status::OK {
        return Ok(Err(vm.http_call_status));
    }
    // Envoy refuses a callout without these.
    if [":method", ":path", ":authority"].iter().any(|h| !headers.contains(h)) {
        return Ok(Err(status::BAD_ARGUMENT));
    }
    let token = vm.next_token;
    vm.next_token += 1;
    let context_id = vm.active_context;
    vm.http_calls.push(HttpCall { context_id, token, upstream, headers, body, trailers, timeout_ms });
    Ok(memory::write_u32(c, ret, token))
}

/// Foreign functions Envoy provides. Only `clear_route_cache` is known here: it succeeds with
/// no result. Every call is recorded.
fn foreign_function(c: &mut Cx<'_>, name: (u32, u32), args: (u32, u32), _pp: u32, _sp: u32) -> Flow {
    let name = st!(memory::read_string(c, name.0, name.1));
    let args = st!(memory::read(c, args.0, args.1));
    let vm = &mut c.data_mut().vm;
    let context_id = vm.active_context;
    let known = name == "clear_route_cache";
    vm.foreign_calls.push(ForeignCall { context_id, name, args });
    Ok(if known { Ok(()) } else { Err(status::NOT_FOUND) })
}

fn define_metric(c: &mut Cx<'_>, ty: u32, p: u32, n: u32, ret: u32) -> Flow {
    let name = st!(memory::read_string(c, p, n));
    let kind = st!(MetricKind::from_u32(ty).ok_or(status::BAD_ARGUMENT));
    let vm = &mut c.data_mut().vm;
    let id = match vm.metrics.ids.get(&name) {
        Some(&id) => {
            if vm.metrics.by_id[id as usize].kind != kind {
                vm.violation(format!("metric `{name}` redefined with another type"));
                return Ok(Err(status::BAD_ARGUMENT));
            }
            id
        }
        None => {
            let id = vm.metrics.by_id.len() as u32;
            vm.metrics.by_id.push(Metric { name: name.clone(), kind, value: 0, samples: Vec::new() });
            vm.metrics.ids.insert(name, id);
            id
        }
    };
    Ok(memory::write_u32(c, ret, id))
}

fn increment_metric(vm: &mut VmState, id: u32, offset: i64) -> u32 {
    let Some(m) = vm.metrics.by_id.get_mut(id as usize) else {
        return status::NOT_FOUND;
    };
    match m.kind {
        MetricKind::Counter if offset < 0 => status::BAD_ARGUMENT,
        MetricKind::Histogram => status::BAD_ARGUMENT,
        _ => {
            m.value = m.value.wrapping_add(offset);
            status::OK
        }
    }
}

fn record_metric(vm: &mut VmState, id: u32, value: u64) -> u32 {
    let Some(m) = vm.metrics.by_id.get_mut(id as usize) else {
        return status::NOT_FOUND;
    };
    match m.kind {
        MetricKind::Histogram => m.samples.push(value),
        _ => m.value = value as i64,
    }
    status::OK
}
