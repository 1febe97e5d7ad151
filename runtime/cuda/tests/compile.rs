//! The kernels from source to PTX (NVRTC) and to sm_90 machine code (`ptxas`), on the CPU: no GPU
//! is needed to know that they compile. Where libnvrtc or ptxas cannot be found, each test says
//! so and returns, unless `SMK_REQUIRE_NVRTC` is set: CI's CUDA step sets it, with the toolkit of
//! `scripts/cuda-toolkit.sh` on `LD_LIBRARY_PATH` and `PATH`.

use std::process::Command;

use smk_runtime_cuda::{compile_ptx, CompileError, KERNELS, SOURCE};

fn required() -> bool {
    std::env::var_os("SMK_REQUIRE_NVRTC").is_some()
}

/// The PTX for `arch`, or `None` (after saying why) where NVRTC is missing and not required.
fn ptx(arch: &'static str) -> Option<String> {
    match compile_ptx(SOURCE, arch) {
        Ok(ptx) => Some(ptx),
        Err(CompileError::NoNvrtc(why)) if !required() => {
            eprintln!("skipped: {why}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn every_kernel_compiles_to_ptx_for_ampere_and_hopper() {
    for arch in ["sm_80", "sm_90"] {
        let Some(ptx) = ptx(arch) else { return };
        assert!(ptx.contains(&format!(".target {arch}")), "{arch}");
        for k in KERNELS {
            assert!(ptx.contains(&format!(".entry {k}(")), "{k} missing from the {arch} PTX");
        }
    }
}

#[test]
fn a_broken_kernel_is_rejected_with_its_log() {
    let broken = "extern \"C\" __global__ void k(float* y) { y[0] = not_declared_here; }";
    match compile_ptx(broken, "sm_90") {
        Err(CompileError::Rejected(log)) => assert!(log.contains("not_declared_here"), "{log}"),
        Err(CompileError::NoNvrtc(why)) if !required() => eprintln!("skipped: {why}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn ptxas_turns_the_ptx_into_sm_90_code_and_refuses_corrupt_ptx() {
    let Some(ptx) = ptx("sm_90") else { return };
    if Command::new("ptxas").arg("--version").output().is_err() {
        assert!(!required(), "ptxas is not on PATH");
        eprintln!("skipped: ptxas is not on PATH");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("smk.ptx"), tmp.path().join("smk.cubin"));
    let ptxas = |text: &str| {
        std::fs::write(&src, text).unwrap();
        Command::new("ptxas")
            .arg("-arch=sm_90")
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap()
    };
    let run = ptxas(&ptx);
    assert!(run.status.success(), "ptxas: {}", String::from_utf8_lossy(&run.stderr));
    assert!(std::fs::metadata(&out).unwrap().len() > 1000);
    // The same PTX with one kernel's body cut short is refused.
    let cut = &ptx[..ptx.rfind(".entry").unwrap() + 40];
    assert!(!ptxas(cut).status.success(), "ptxas accepted truncated PTX");
}
