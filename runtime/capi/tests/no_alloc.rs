//! `smk_infer` and `smk_infer_tasks` allocate nothing, on success and on failure (the error's
//! detail goes to a fixed buffer): a counting global allocator watches this thread.

mod common;
#[path = "../../tests/common/counting.rs"]
mod counting;

use common::{model_bytes, values};
use counting::allocations_in;
use smk::*;
use std::ptr::null_mut;

#[test]
fn infer_and_task_inference_allocate_nothing() {
    // The counter itself must see allocations, or the test proves nothing.
    assert_eq!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 10]))), 1);
    let bytes = model_bytes(3);
    let (mut m, mut p, mut tp) = (null_mut(), null_mut(), null_mut());
    let (mut s, mut ts) = (0, 0);
    // SAFETY: `bytes` outlives the handles; every out-pointer is writable.
    unsafe {
        assert_eq!(smk_model_open_bytes(bytes.as_ptr(), bytes.len(), &mut m), SMK_OK);
        assert_eq!(smk_plan_new(m, 4, 1, &mut p), SMK_OK);
        assert_eq!(smk_plan_scratch_bytes(p, &mut s), SMK_OK);
        assert_eq!(smk_task_plan_new(m, SMK_TASK_RULE_ONE_SHOT, &mut tp), SMK_OK);
        assert_eq!(smk_task_plan_scratch_bytes(tp, &mut ts), SMK_OK);
    }
    let (mut scratch, mut task_scratch) = (vec![0u8; s], vec![0u8; ts]);
    let x = values(5, 4 * 35, 2.0);
    let mut y = vec![0f32; 4 * 11];
    let mut guesses = vec![SmkTaskGuess::default(); 4];
    // SAFETY: in each call, live handles; buffers of the lengths passed, not overlapping.
    let n = allocations_in(|| unsafe {
        assert_eq!(
            smk_infer(p, scratch.as_mut_ptr(), s, x.as_ptr(), x.len(), y.as_mut_ptr(), y.len()),
            SMK_OK
        );
        let (ts_ptr, g) = (task_scratch.as_mut_ptr(), guesses.as_mut_ptr());
        assert_eq!(smk_infer_tasks(tp, ts_ptr, ts, x.as_ptr(), x.len(), g, 4), SMK_OK);
        // Failures record their detail without allocating too.
        let short = smk_infer(
            p,
            scratch.as_mut_ptr(),
            s - 1,
            x.as_ptr(),
            x.len(),
            y.as_mut_ptr(),
            y.len(),
        );
        assert_eq!(short, SMK_ERR_SCRATCH_TOO_SMALL);
        let wrong = smk_infer_tasks(tp, ts_ptr, ts, x.as_ptr(), x.len() - 1, g, 4);
        assert_eq!(wrong, SMK_ERR_INPUT_LENGTH);
    });
    assert_eq!(n, 0, "smk_infer / smk_infer_tasks allocated {n} times");
    // SAFETY: handles from this library, freed once.
    unsafe {
        smk_task_plan_free(tp);
        smk_plan_free(p);
        smk_model_free(m);
    }
}
