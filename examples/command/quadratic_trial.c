/* A trial in C that never links pbt-actors: gradient descent on f(x) = (x - 3)^2 + 1.
 *
 *   cc -O2 -o quadratic_trial quadratic_trial.c
 *   pbt-actors run examples/command/quadratic.toml   (after compiling it here)
 *
 * It reads its learning rate from its arguments ("--lr {lr}") and its trial and step range
 * from the environment pbt-actors sets (PBT_TRIAL_ID, PBT_START_STEP, PBT_END_STEP,
 * PBT_PARENT_DIR, PBT_CHECKPOINT_DIR), prints one metric line per step ("pbt: step=N
 * score=S", S = -f(x), maximised) and writes its state to state.txt in the checkpoint
 * directory. On SIGTERM it saves after the current step and prints "pbt: checkpoint step=N",
 * so a preempted trial resumes there. Deterministic: "%.17g" round-trips every double, so a
 * replay reproduces the metrics bit for bit. "--step-ms N" sleeps N ms per step (tests). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stop_requested = 0;

static void on_sigterm(int signum) { (void)signum; stop_requested = 1; }

static long env_long(const char *name, long fallback) {
    const char *text = getenv(name);
    return text && *text ? strtol(text, NULL, 10) : fallback;
}

static int save(const char *dir, double x, long step) {
    char path[4096];
    snprintf(path, sizeof path, "%s/state.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) { fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno)); return 1; }
    fprintf(f, "%.17g %ld\n", x, step);
    return fclose(f) != 0;
}

int main(int argc, char **argv) {
    double lr = 0.1, x = -5.0;
    long step_ms = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--lr")) lr = strtod(argv[i + 1], NULL);
        else if (!strcmp(argv[i], "--step-ms")) step_ms = strtol(argv[i + 1], NULL, 10);
        else { fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
    }
    signal(SIGTERM, on_sigterm);
    long start = env_long("PBT_START_STEP", 0), end = env_long("PBT_END_STEP", 10);
    const char *parent = getenv("PBT_PARENT_DIR"), *out = getenv("PBT_CHECKPOINT_DIR");
    if (!out) { fprintf(stderr, "PBT_CHECKPOINT_DIR is not set\n"); return 2; }
    long step = start;
    if (parent) {
        char path[4096];
        snprintf(path, sizeof path, "%s/state.txt", parent);
        FILE *f = fopen(path, "r");
        if (!f || fscanf(f, "%lg %ld", &x, &step) != 2) { fprintf(stderr, "cannot read %s\n", path); return 3; }
        fclose(f);
    }
    fprintf(stderr, "trial %ld: lr=%.17g from step %ld to %ld\n", env_long("PBT_TRIAL_ID", 0), lr, step, end);
    while (step < end) {
        x -= lr * 2.0 * (x - 3.0);
        step++;
        printf("pbt: step=%ld score=%.17g\n", step, -((x - 3.0) * (x - 3.0) + 1.0));
        fflush(stdout);
        if (step_ms > 0) {
            struct timespec pause = {step_ms / 1000, (step_ms % 1000) * 1000000L};
            nanosleep(&pause, NULL);
        }
        if (stop_requested) break;
    }
    if (save(out, x, step)) return 4;
    printf("pbt: checkpoint step=%ld\n", step);
    return 0;
}
