/* Classifies one 28×28 digit with a .smk model through the C API.
 *
 *   classify MODEL.smk DIGIT.bin [TASK]
 *
 * DIGIT.bin holds 784 raw pixel bytes (0–255, row by row), such as
 * runtime/examples/thumbv7em/digit.bin. TASK picks the mask set of a file with one per task;
 * without it, a file with several tasks has its task inferred from the digit.
 * Build and run: scripts/embed-examples.sh, or see docs/EMBEDDING.md. */
#include "smk.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints what failed, with the library's detail, and exits. */
static void check(smk_status status, const char *what) {
    if (status != SMK_OK) {
        fprintf(stderr, "classify: %s: %s (%s)\n", what, smk_error_message(status), smk_last_error());
        exit(1);
    }
}

/* The whole file in a buffer aligned to 64 bytes, so the kernels read it in place. */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f || fseek(f, 0, SEEK_END) != 0) {
        fprintf(stderr, "classify: cannot read %s\n", path);
        exit(1);
    }
    long size = ftell(f);
    rewind(f);
    unsigned char *bytes = aligned_alloc(64, ((size_t)size + 63) / 64 * 64 + 64);
    if (size < 0 || !bytes || fread(bytes, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "classify: cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    *len = (size_t)size;
    return bytes;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: classify MODEL.smk DIGIT.bin [TASK]\n");
        return 2;
    }
    size_t model_len, digit_len;
    unsigned char *model_bytes = read_file(argv[1], &model_len);
    unsigned char *digit = read_file(argv[2], &digit_len);

    smk_model *model = NULL;
    check(smk_model_open_bytes(model_bytes, model_len, &model), "opening the model");
    check(smk_model_verify(model), "checking the model's checksums");
    uint32_t tasks = 0;
    check(smk_task_count(model, &tasks), "counting tasks");

    /* Pixels in [0, 1]: the model normalises them itself. */
    float pixels[784];
    if (digit_len != sizeof pixels / sizeof pixels[0]) {
        fprintf(stderr, "classify: %s holds %zu bytes, not 784\n", argv[2], digit_len);
        return 1;
    }
    for (size_t i = 0; i < digit_len; i++) pixels[i] = digit[i] / 255.0f;

    uint32_t task = SMK_NO_TASK;
    if (argc == 4) {
        task = (uint32_t)strtoul(argv[3], NULL, 10);
    } else if (tasks > 1) {
        smk_task_plan *tp = NULL;
        size_t need = 0;
        check(smk_task_plan_new(model, SMK_TASK_RULE_ONE_SHOT, &tp), "planning task inference");
        check(smk_task_plan_scratch_bytes(tp, &need), "sizing task inference");
        void *scratch = malloc(need);
        smk_task_guess guess;
        check(smk_infer_tasks(tp, scratch, need, pixels, 784, &guess, 1), "inferring the task");
        task = guess.task;
        printf("inferred task %u (confidence %.3f)\n", task, guess.confidence);
        free(scratch);
        smk_task_plan_free(tp);
    }
    if (task != SMK_NO_TASK) {
        char name[64];
        check(smk_task_name(model, task, name, sizeof name, NULL), "reading the task's name");
        printf("task %u of %u: %s\n", task, tasks, name);
    }

    /* Plan once, then infer as often as needed in the same scratch: smk_infer allocates nothing. */
    smk_plan *plan = NULL;
    size_t scratch_bytes = 0, input_len = 0, classes = 0;
    check(smk_plan_new(model, 1, task, &plan), "planning");
    check(smk_plan_scratch_bytes(plan, &scratch_bytes), "sizing scratch");
    check(smk_plan_input_len(plan, &input_len), "reading the input length");
    check(smk_plan_output_len(plan, &classes), "reading the output length");
    if (input_len != 784 || classes > 1000) {
        fprintf(stderr, "classify: the model takes %zu inputs and gives %zu outputs: not a 28x28 digit classifier\n",
                input_len, classes);
        return 1;
    }
    void *scratch = malloc(scratch_bytes);
    float out[1000];
    check(smk_infer(plan, scratch, scratch_bytes, pixels, input_len, out, classes), "inferring");

    size_t best = 0;
    for (size_t k = 1; k < classes; k++)
        if (out[k] > out[best]) best = k;
    printf("class %zu (output %.4f), %zu bytes of scratch, smk %s\n", best, out[best], scratch_bytes, smk_version());

    free(scratch);
    smk_plan_free(plan);
    smk_model_free(model);
    free(model_bytes);
    free(digit);
    return 0;
}
