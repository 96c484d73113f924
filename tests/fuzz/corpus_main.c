/*
 * The regression driver of the normal build: feeds every file of the given corpus directories
 * (or the given files) to the target's LLVMFuzzerTestOneInput, in name order, as libFuzzer
 * would replay them, each in a child process: a broken invariant aborts (FUZZ_CHECK) or a
 * sanitizer stops the child, and the test fails after naming every failing input.
 *   unit_fuzz_corpus_json_scan tests/fuzz/corpus/json_scan
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 4096, len = 0, n;
    uint8_t *data = malloc(cap);
    while ((n = fread(data + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap)
            data = realloc(data, cap *= 2);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        perror(path);
        free(data);
        return -1;
    }
    /* An exact-size copy, so that ASan sees a read past the input. */
    uint8_t *exact = malloc(len ? len : 1);
    memcpy(exact, data, len);
    free(data);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        free(exact);
        return -1;
    }
    if (pid == 0) {
        LLVMFuzzerTestOneInput(exact, len);
        free(exact);
        exit(0);
    }
    free(exact);
    int status;
    if (waitpid(pid, &status, 0) != pid) {
        perror("waitpid");
        return -1;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    fprintf(stderr, "FAILED: %s (%zu bytes): %s %d\n\n", path, len,
            WIFSIGNALED(status) ? "signal" : "exit status",
            WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    return 1;
}

static int only_files(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

int main(int argc, char **argv)
{
    int inputs = 0, failed = 0, r;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            if ((r = run_file(argv[i])) < 0)
                return 1;
            failed += r;
            inputs++;
            continue;
        }
        struct dirent **names;
        int n = scandir(argv[i], &names, only_files, alphasort);
        if (n < 0) {
            perror(argv[i]);
            return 1;
        }
        for (int j = 0; j < n; j++) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], names[j]->d_name);
            if ((r = run_file(path)) < 0)
                return 1;
            failed += r;
            inputs++;
            free(names[j]);
        }
        free(names);
    }
    if (inputs == 0) {
        fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...: no inputs\n", argv[0]);
        return 1;
    }
    if (failed) {
        fprintf(stderr, "%d of %d inputs failed\n", failed, inputs);
        return 1;
    }
    printf("%d inputs, every invariant held\n", inputs);
    return 0;
}
