//! The C API called as C calls it: results equal to the Rust API's, and every error path
//! (NULL pointers, wrong handles, short buffers, wrong sizes, misaligned and overlapping
//! buffers, hostile bytes) answered with its status code and a message, never a crash.

mod common;

use common::{model_bytes, values};
use smk::*;
use smk_runtime::{Model, Plan, TaskGuess, TaskPlan, TaskRule};
use std::ffi::{c_char, CStr};
use std::ptr::{null, null_mut};

fn last_error() -> String {
    // SAFETY: `smk_last_error` returns this thread's NUL-terminated buffer.
    unsafe { CStr::from_ptr(smk_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts `status` is `want`, and that the detail mentions `words`.
#[track_caller]
fn expect(status: SmkStatus, want: SmkStatus, words: &str) {
    assert_eq!(status, want, "status {status} ({}), wanted {want}", last_error());
    assert!(
        last_error().contains(words),
        "'{}' does not mention '{words}'",
        last_error()
    );
}

fn open(bytes: &[u8]) -> *mut SmkModel {
    let mut m = null_mut();
    // SAFETY: `bytes` outlives the model in every test; `m` is writable.
    let status = unsafe { smk_model_open_bytes(bytes.as_ptr(), bytes.len(), &mut m) };
    assert_eq!(status, SMK_OK);
    assert!(!m.is_null());
    m
}

fn plan(model: *const SmkModel, batch: usize, task: u32) -> *mut SmkPlan {
    let mut p = null_mut();
    // SAFETY: a live model; `p` is writable.
    let status = unsafe { smk_plan_new(model, batch, task, &mut p) };
    assert_eq!(status, SMK_OK, "{}", last_error());
    p
}

fn plan_sizes(p: *const SmkPlan) -> (usize, usize, usize) {
    let (mut s, mut i, mut o) = (0, 0, 0);
    // SAFETY: a live plan and writable outputs.
    unsafe {
        assert_eq!(smk_plan_scratch_bytes(p, &mut s), SMK_OK);
        assert_eq!(smk_plan_input_len(p, &mut i), SMK_OK);
        assert_eq!(smk_plan_output_len(p, &mut o), SMK_OK);
    }
    (s, i, o)
}

#[test]
fn infer_through_the_c_api_equals_the_rust_api() {
    for tasks in [0u32, 1, 3] {
        let bytes = model_bytes(tasks);
        let m = open(&bytes);
        let mut count = 99;
        // SAFETY: a live model; writable count.
        assert_eq!(unsafe { smk_task_count(m, &mut count) }, SMK_OK);
        assert_eq!(count, tasks);
        let rust_model = Model::parse(&bytes).unwrap();
        for (batch, task) in [(1usize, tasks.checked_sub(1)), (5, tasks.checked_sub(1))] {
            let p = plan(m, batch, task.unwrap_or(SMK_NO_TASK));
            let (scratch_bytes, in_len, out_len) = plan_sizes(p);
            let rust = Plan::new(&rust_model, batch, task).unwrap();
            assert_eq!((scratch_bytes, in_len, out_len), (rust.scratch_bytes(), 35, 11));
            let x = values(3, batch * in_len, 2.0);
            let mut scratch = vec![0u8; scratch_bytes];
            let mut y = vec![0f32; batch * out_len];
            // SAFETY: a live plan; buffers of the lengths passed, not overlapping.
            let status = unsafe {
                smk_infer(
                    p,
                    scratch.as_mut_ptr(),
                    scratch.len(),
                    x.as_ptr(),
                    x.len(),
                    y.as_mut_ptr(),
                    y.len(),
                )
            };
            assert_eq!(status, SMK_OK, "{}", last_error());
            let mut want = vec![0f32; batch * out_len];
            rust.infer(&mut vec![0u8; rust.scratch_bytes()], &x, &mut want).unwrap();
            assert_eq!(y, want);
            // SAFETY: a plan from `smk_plan_new`, freed once.
            unsafe { smk_plan_free(p) };
        }
        // SAFETY: a model from `smk_model_open_bytes`, freed once.
        unsafe { smk_model_free(m) };
    }
}

#[test]
fn a_plan_outlives_its_model_handle() {
    let bytes = model_bytes(1);
    let m = open(&bytes);
    let p = plan(m, 1, 0);
    // SAFETY: freed once; the plan reads the caller's bytes, which stay.
    unsafe { smk_model_free(m) };
    let (s, i, o) = plan_sizes(p);
    let (x, mut scratch, mut y) = (values(1, i, 1.0), vec![0u8; s], vec![0f32; o]);
    // SAFETY: a live plan and buffers of the lengths passed.
    let status = unsafe { smk_infer(p, scratch.as_mut_ptr(), s, x.as_ptr(), i, y.as_mut_ptr(), o) };
    assert_eq!(status, SMK_OK);
    assert!((y.iter().sum::<f32>() - 1.0).abs() < 1e-5, "softmax output sums to 1");
    // SAFETY: freed once.
    unsafe { smk_plan_free(p) };
}

#[test]
fn task_names_and_short_buffers() {
    let bytes = model_bytes(3);
    let m = open(&bytes);
    let mut buf = [b'#' as c_char; 16];
    let mut need = 0usize;
    // SAFETY: in all calls below, a live model; `buf` holds the length passed; `need` writable.
    unsafe {
        assert_eq!(smk_task_name(m, 2, buf.as_mut_ptr(), buf.len(), &mut need), SMK_OK);
        assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), "task-2");
        assert_eq!(need, 7);
        // Asking for the length first.
        need = 0;
        expect(
            smk_task_name(m, 0, null_mut(), 0, &mut need),
            SMK_ERR_BUFFER_TOO_SMALL,
            "too short",
        );
        assert_eq!(need, 7);
        // One byte short of the NUL: nothing written.
        let mut short = [b'#' as c_char; 6];
        expect(
            smk_task_name(m, 1, short.as_mut_ptr(), 6, null_mut()),
            SMK_ERR_BUFFER_TOO_SMALL,
            "NUL",
        );
        assert!(short.iter().all(|&c| c == b'#' as c_char));
        expect(
            smk_task_name(m, 3, buf.as_mut_ptr(), buf.len(), null_mut()),
            SMK_ERR_NO_SUCH_TASK,
            "task 3",
        );
        expect(
            smk_task_name(m, 0, null_mut(), 16, null_mut()),
            SMK_ERR_NULL_POINTER,
            "buf",
        );
        expect(
            smk_task_name(null(), 0, buf.as_mut_ptr(), 16, null_mut()),
            SMK_ERR_NULL_POINTER,
            "model",
        );
        smk_model_free(m);
    }
}

#[test]
fn opening_refuses_null_pointers_and_hostile_bytes() {
    let bytes = model_bytes(1);
    // Stale garbage that a failed open must overwrite with NULL.
    let mut m = 8usize as *mut SmkModel;
    // SAFETY: in all calls below, every non-NULL pointer is valid for the length passed.
    unsafe {
        expect(
            smk_model_open_bytes(bytes.as_ptr(), bytes.len(), null_mut()),
            SMK_ERR_NULL_POINTER,
            "out_model",
        );
        expect(smk_model_open_bytes(null(), 100, &mut m), SMK_ERR_NULL_POINTER, "bytes");
        assert!(m.is_null(), "a failed open leaves NULL");
        expect(
            smk_model_open_bytes(bytes.as_ptr(), usize::MAX, &mut m),
            SMK_ERR_BAD_ARGUMENT,
            "len",
        );
        // Every truncation is refused, with a message naming what is wrong.
        for len in [0, 10, 63, 64, bytes.len() / 2, bytes.len() - 1] {
            let status = smk_model_open_bytes(bytes.as_ptr(), len, &mut m);
            assert_eq!(status, SMK_ERR_FORMAT, "truncated to {len}");
            assert!(m.is_null());
            assert!(!last_error().is_empty());
        }
        let garbage = vec![0x5au8; 4096];
        expect(
            smk_model_open_bytes(garbage.as_ptr(), garbage.len(), &mut m),
            SMK_ERR_FORMAT,
            "",
        );
    }
}

#[test]
fn verify_finds_a_corrupted_byte_that_parsing_does_not_read() {
    let mut bytes = model_bytes(1);
    let m = open(&bytes);
    // SAFETY: a live model.
    assert_eq!(unsafe { smk_model_verify(m) }, SMK_OK);
    // SAFETY: freed once, before the bytes change.
    unsafe { smk_model_free(m) };
    // A weight of fc2 (stored f32 values: parsing checks their place, not their bits).
    let target = values(6, 11 * 19, 2.0)[5].to_le_bytes();
    let at = bytes.windows(4).position(|w| w == target).unwrap();
    bytes[at] ^= 0x40;
    let m = open(&bytes);
    // SAFETY: a live model over the changed bytes, which outlive it; then freed once.
    unsafe {
        expect(smk_model_verify(m), SMK_ERR_FORMAT, "checksum");
        expect(smk_model_verify(null()), SMK_ERR_NULL_POINTER, "model");
        smk_model_free(m);
    }
}

#[test]
fn plans_refuse_bad_batches_tasks_and_pointers() {
    let (one, three) = (model_bytes(1), model_bytes(3));
    let (m1, m3) = (open(&one), open(&three));
    let mut p: *mut SmkPlan = null_mut();
    // SAFETY: in all calls below, live models, writable outputs.
    unsafe {
        expect(smk_plan_new(m1, 0, 0, &mut p), SMK_ERR_BAD_BATCH, "batch size 0");
        assert!(p.is_null());
        expect(smk_plan_new(m1, usize::MAX, 0, &mut p), SMK_ERR_BAD_BATCH, "batch");
        expect(
            smk_plan_new(m3, 1, SMK_NO_TASK, &mut p),
            SMK_ERR_TASK_REQUIRED,
            "3 tasks",
        );
        expect(
            smk_plan_new(m3, 1, 3, &mut p),
            SMK_ERR_NO_SUCH_TASK,
            "task 3 does not exist",
        );
        expect(smk_plan_new(m1, 1, 1, &mut p), SMK_ERR_NO_SUCH_TASK, "task 1");
        expect(smk_plan_new(null(), 1, 0, &mut p), SMK_ERR_NULL_POINTER, "model");
        expect(smk_plan_new(m1, 1, 0, null_mut()), SMK_ERR_NULL_POINTER, "out_plan");
        let mut n = 0usize;
        let mut count = 0u32;
        expect(smk_plan_scratch_bytes(null(), &mut n), SMK_ERR_NULL_POINTER, "plan");
        expect(smk_plan_input_len(null(), &mut n), SMK_ERR_NULL_POINTER, "plan");
        expect(smk_plan_output_len(null(), &mut n), SMK_ERR_NULL_POINTER, "plan");
        expect(smk_task_count(null(), &mut count), SMK_ERR_NULL_POINTER, "model");
        expect(smk_task_count(m1, null_mut()), SMK_ERR_NULL_POINTER, "out_count");
        let good = plan(m1, 1, 0);
        expect(
            smk_plan_scratch_bytes(good, null_mut()),
            SMK_ERR_NULL_POINTER,
            "out_bytes",
        );
        expect(smk_plan_input_len(good, null_mut()), SMK_ERR_NULL_POINTER, "out_len");
        expect(smk_plan_output_len(good, null_mut()), SMK_ERR_NULL_POINTER, "out_len");
        // A handle of the wrong kind is refused, not misread; freeing one is ignored.
        expect(
            smk_plan_scratch_bytes(m1.cast(), &mut n),
            SMK_ERR_BAD_ARGUMENT,
            "not a smk_plan",
        );
        expect(
            smk_task_count(good.cast(), &mut count),
            SMK_ERR_BAD_ARGUMENT,
            "not a smk_model",
        );
        smk_model_free(good.cast());
        assert_eq!(smk_plan_scratch_bytes(good, &mut n), SMK_OK);
        // NULL is freed as nothing.
        smk_model_free(null_mut());
        smk_plan_free(null_mut());
        smk_task_plan_free(null_mut());
        smk_plan_free(good);
        smk_model_free(m1);
        smk_model_free(m3);
    }
}

#[test]
fn infer_refuses_wrong_sizes_nulls_misalignment_and_overlap() {
    let bytes = model_bytes(1);
    let m = open(&bytes);
    let p = plan(m, 2, 0);
    let (s, i, o) = plan_sizes(p);
    let mut scratch = vec![0u8; s];
    let x = values(2, 2 * i + 1, 1.0);
    let mut y = vec![0f32; 2 * o + 1];
    let (sp, xp, yp) = (scratch.as_mut_ptr(), x.as_ptr(), y.as_mut_ptr());
    // SAFETY: in all calls below, a live plan; each non-NULL pointer holds the length passed (the
    // misaligned ones one byte in, within their buffers' last element).
    unsafe {
        assert_eq!(smk_infer(p, sp, s, xp, 2 * i, yp, 2 * o), SMK_OK);
        expect(
            smk_infer(p, sp, s - 1, xp, 2 * i, yp, 2 * o),
            SMK_ERR_SCRATCH_TOO_SMALL,
            "needs",
        );
        expect(
            smk_infer(p, sp, s, xp, 2 * i - 1, yp, 2 * o),
            SMK_ERR_INPUT_LENGTH,
            "input holds",
        );
        expect(
            smk_infer(p, sp, s, xp, 2 * i + 1, yp, 2 * o),
            SMK_ERR_INPUT_LENGTH,
            "input holds",
        );
        expect(
            smk_infer(p, sp, s, xp, 2 * i, yp, o),
            SMK_ERR_OUTPUT_LENGTH,
            "output holds",
        );
        expect(
            smk_infer(null(), sp, s, xp, 2 * i, yp, 2 * o),
            SMK_ERR_NULL_POINTER,
            "plan",
        );
        expect(
            smk_infer(p, null_mut(), s, xp, 2 * i, yp, 2 * o),
            SMK_ERR_NULL_POINTER,
            "scratch",
        );
        expect(
            smk_infer(p, sp, s, null(), 2 * i, yp, 2 * o),
            SMK_ERR_NULL_POINTER,
            "input",
        );
        expect(
            smk_infer(p, sp, s, xp, 2 * i, null_mut(), 2 * o),
            SMK_ERR_NULL_POINTER,
            "output",
        );
        let odd_x = xp.cast::<u8>().add(1).cast::<f32>();
        expect(
            smk_infer(p, sp, s, odd_x, 2 * i, yp, 2 * o),
            SMK_ERR_BAD_ARGUMENT,
            "aligned",
        );
        let odd_y = yp.cast::<u8>().add(1).cast::<f32>();
        expect(
            smk_infer(p, sp, s, xp, 2 * i, odd_y, 2 * o),
            SMK_ERR_BAD_ARGUMENT,
            "aligned",
        );
        expect(
            smk_infer(p, sp, s, xp, usize::MAX / 2, yp, 2 * o),
            SMK_ERR_BAD_ARGUMENT,
            "too long",
        );
        // Output written over the input, or scratch over the output: refused.
        expect(
            smk_infer(p, sp, s, yp, 2 * o, yp, 2 * o),
            SMK_ERR_BAD_ARGUMENT,
            "overlap",
        );
        expect(
            smk_infer(p, yp.cast(), 8, xp, 2 * i, yp, 2 * o),
            SMK_ERR_BAD_ARGUMENT,
            "overlap",
        );
        expect(
            smk_infer(m.cast(), sp, s, xp, 2 * i, yp, 2 * o),
            SMK_ERR_BAD_ARGUMENT,
            "not a smk_plan",
        );
        smk_plan_free(p);
        smk_model_free(m);
    }
}

#[test]
fn task_inference_through_the_c_api_equals_the_rust_api() {
    let bytes = model_bytes(3);
    let m = open(&bytes);
    let rust_model = Model::parse(&bytes).unwrap();
    let rules = [
        (SMK_TASK_RULE_ONE_SHOT, TaskRule::OneShot),
        (SMK_TASK_RULE_MIN_ENTROPY, TaskRule::MinEntropy),
        (SMK_TASK_RULE_BINARY_SEARCH, TaskRule::BinarySearch),
    ];
    for (rule, rust_rule) in rules {
        let mut tp = null_mut();
        // SAFETY: a live model; writable outputs; buffers of the lengths passed.
        unsafe {
            assert_eq!(smk_task_plan_new(m, rule, &mut tp), SMK_OK);
            let mut s = 0;
            assert_eq!(smk_task_plan_scratch_bytes(tp, &mut s), SMK_OK);
            // 21 inputs: more than one of the API's chunks of 16.
            let n = 21;
            let x = values(9, n * 35, 3.0);
            let mut scratch = vec![0u8; s];
            let mut got = vec![SmkTaskGuess::default(); n];
            let status = smk_infer_tasks(tp, scratch.as_mut_ptr(), s, x.as_ptr(), x.len(), got.as_mut_ptr(), n);
            assert_eq!(status, SMK_OK, "{}", last_error());
            let rust = TaskPlan::new(&rust_model, rust_rule).unwrap();
            let blank = TaskGuess {
                task: 0,
                confidence: 0.0,
                score: 0.0,
            };
            let mut want = vec![blank; n];
            rust.infer_tasks(&mut vec![0u8; rust.scratch_bytes()], &x, &mut want)
                .unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((g.task, g.confidence, g.score), (w.task, w.confidence, w.score));
            }
            // The error paths of task inference.
            let (sp, xp, gp) = (scratch.as_mut_ptr(), x.as_ptr(), got.as_mut_ptr());
            expect(
                smk_infer_tasks(tp, sp, s, xp, x.len() - 1, gp, n),
                SMK_ERR_INPUT_LENGTH,
                "input holds",
            );
            expect(
                smk_infer_tasks(tp, sp, s - 1, xp, x.len(), gp, n),
                SMK_ERR_SCRATCH_TOO_SMALL,
                "needs",
            );
            expect(
                smk_infer_tasks(tp, sp, s, xp, x.len(), null_mut(), n),
                SMK_ERR_NULL_POINTER,
                "guesses",
            );
            expect(
                smk_infer_tasks(tp, null_mut(), s, xp, x.len(), gp, n),
                SMK_ERR_NULL_POINTER,
                "scratch",
            );
            expect(
                smk_infer_tasks(tp, sp, s, null(), x.len(), gp, n),
                SMK_ERR_NULL_POINTER,
                "inputs",
            );
            expect(
                smk_infer_tasks(null(), sp, s, xp, x.len(), gp, n),
                SMK_ERR_NULL_POINTER,
                "plan",
            );
            expect(
                smk_infer_tasks(tp, sp, s, gp.cast(), 35, gp, 1),
                SMK_ERR_BAD_ARGUMENT,
                "overlap",
            );
            let mut count = 0;
            expect(
                smk_task_plan_scratch_bytes(null(), &mut count),
                SMK_ERR_NULL_POINTER,
                "plan",
            );
            expect(
                smk_task_plan_scratch_bytes(tp, null_mut()),
                SMK_ERR_NULL_POINTER,
                "out_bytes",
            );
            expect(
                smk_task_plan_scratch_bytes(m.cast(), &mut count),
                SMK_ERR_BAD_ARGUMENT,
                "not a smk_task_plan",
            );
            smk_task_plan_free(tp);
        }
    }
    let one = model_bytes(1);
    let m1 = open(&one);
    let mut tp = null_mut();
    // SAFETY: live models; writable outputs.
    unsafe {
        expect(smk_task_plan_new(m, 7, &mut tp), SMK_ERR_BAD_ARGUMENT, "SMK_TASK_RULE_");
        assert!(tp.is_null());
        expect(
            smk_task_plan_new(m1, SMK_TASK_RULE_ONE_SHOT, &mut tp),
            SMK_ERR_UNSUPPORTED,
            "task inference",
        );
        expect(
            smk_task_plan_new(null(), SMK_TASK_RULE_ONE_SHOT, &mut tp),
            SMK_ERR_NULL_POINTER,
            "model",
        );
        expect(
            smk_task_plan_new(m, SMK_TASK_RULE_ONE_SHOT, null_mut()),
            SMK_ERR_NULL_POINTER,
            "out_plan",
        );
        smk_model_free(m);
        smk_model_free(m1);
    }
}

#[test]
fn every_status_has_its_own_message() {
    let codes = [
        SMK_OK,
        SMK_ERR_NULL_POINTER,
        SMK_ERR_BAD_ARGUMENT,
        SMK_ERR_FORMAT,
        SMK_ERR_TASK_REQUIRED,
        SMK_ERR_NO_SUCH_TASK,
        SMK_ERR_BAD_BATCH,
        SMK_ERR_UNSUPPORTED,
        SMK_ERR_SCRATCH_TOO_SMALL,
        SMK_ERR_INPUT_LENGTH,
        SMK_ERR_OUTPUT_LENGTH,
        SMK_ERR_BUFFER_TOO_SMALL,
        SMK_ERR_INCONSISTENT,
        SMK_ERR_INTERNAL,
    ];
    // SAFETY: `smk_error_message` returns static NUL-terminated strings.
    let message = |c| unsafe { CStr::from_ptr(smk_error_message(c)) }.to_str().unwrap();
    let texts: std::collections::HashSet<&str> = codes.iter().map(|&c| message(c)).collect();
    assert_eq!(texts.len(), codes.len());
    assert!(!texts.contains("unknown status code"));
    assert_eq!(message(-1), "unknown status code");
    assert_eq!(message(codes.len() as i32), "unknown status code");
    // SAFETY: `smk_version` returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(smk_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}
