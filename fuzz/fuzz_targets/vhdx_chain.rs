//! Hyper-V checkpoint chains: one or two VHDX files (a differencing disk and its
//! parent) parsed, checked to belong together, mapped and read (`haven-worker`'s
//! `pipeline::vhdx`). Data areas are in order and inside the range asked; a read past
//! the disk's end is refused.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("vhdx_chain"),
    |data: &[u8]| haven_worker::fuzzing::vhdx_chain(data)
);
