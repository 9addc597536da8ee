/*
 * crashsim: what a power loss would leave of a directory tree, recorded while real
 * processes run (haven_testkit::power_loss).
 *
 * Model (the strict POSIX one): nothing written is durable until fsync or fdatasync
 * of its file returns; a directory entry (created, renamed, linked, removed) is
 * durable only once fsync of its directory returns. So only the sync calls need to be
 * seen: preloaded into a process (LD_PRELOAD), this library wraps fsync, fdatasync,
 * syncfs and sync, and before each call on a file or directory below CRASHSIM_ROOT it
 * copies what that call will make durable — the file's bytes, or the directory's
 * entries (name, inode, birth time, type) — into CRASHSIM_DIR; once the call has
 * succeeded it appends one line naming the copy to CRASHSIM_DIR/log. A process killed
 * before the call returned leaves no line: that sync never happened. Copies are taken
 * before the real call, so a write racing with the sync is not counted as durable.
 *
 * Built with -DCRASHSIM_MAIN it is also the tool that records the starting state
 * (`crashsim base ROOT`: every directory and file as if synced).
 *
 * Log lines (tab-separated): `F INO BTIME COPY` (a file's durable bytes), `D INO BTIME
 * COPY` (a directory's durable entries: lines NAME, INO, BTIME, d|f|o), `R INO BTIME`
 * (the root). Files are named by inode number, generation and birth time (BTIME is
 * "GENERATION.SECONDS.NANOSECONDS"), so a reused inode number is a different file. The tree a crash leaves is rebuilt from the log by the test
 * (power_loss.rs).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static unsigned long counter;

/* The file's identity as text, "INO\tGENERATION.BTIME": its inode number, the inode's
 * generation (ext4 and XFS change it when a number is reused; 0 where the file
 * system has none) and its birth time. `name` relative to `dirfd`, or "" for dirfd
 * itself. */
static int identity(int dirfd, const char *name, char *out, size_t size, char *type) {
    int fd = *name ? openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
                   : dirfd;
    if (fd < 0)
        return -1;
    struct statx st;
    int result = statx(fd, "", AT_EMPTY_PATH, STATX_INO | STATX_BTIME | STATX_TYPE, &st);
    int generation = 0;
    if (result == 0 && ioctl(fd, FS_IOC_GETVERSION, &generation) != 0)
        generation = 0;
    int saved = errno;
    if (*name)
        close(fd);
    errno = saved;
    if (result != 0)
        return -1;
    if (!(st.stx_mask & STATX_BTIME)) {
        errno = ENOTSUP;
        return -1;
    }
    snprintf(out, size, "%llu\t%u.%lld.%09u", (unsigned long long)st.stx_ino,
             (unsigned)generation, (long long)st.stx_btime.tv_sec, st.stx_btime.tv_nsec);
    if (type)
        *type = S_ISDIR(st.stx_mode) ? 'd' : S_ISREG(st.stx_mode) ? 'f' : 'o';
    return 0;
}

static const char *env(const char *name) {
    const char *value = getenv(name);
    return value && *value ? value : NULL;
}

/* The path of fd if it is below CRASHSIM_ROOT, else NULL. */
static int watched_path(int fd, char *path, size_t size) {
    const char *root = env("CRASHSIM_ROOT");
    if (!root || !env("CRASHSIM_DIR"))
        return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, size - 1);
    if (len < 0)
        return 0;
    path[len] = 0;
    size_t root_len = strlen(root);
    return strncmp(path, root, root_len) == 0 && (path[root_len] == 0 || path[root_len] == '/');
}

/* A new file name in CRASHSIM_DIR for a copy. */
static void copy_name(char *out, size_t size, const char *kind) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unsigned long n = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
    snprintf(out, size, "%s/%s-%d-%lu-%lld%09ld", env("CRASHSIM_DIR"), kind, (int)getpid(), n,
             (long long)now.tv_sec, now.tv_nsec);
}

static void die(const char *what) {
    /* Never pass a sync off as recorded: the run's result would be a lie. */
    fprintf(stderr, "crashsim: %s: %s\n", what, strerror(errno));
    abort();
}

/* Copies the bytes of the open file fd (any open mode, O_DIRECT too) to a new file. */
static void copy_file(int fd, char *copy, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int in = open(link, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        die("open for copy");
    copy_name(copy, size, "file");
    int out = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0)
        die("create copy");
    char buffer[1 << 16];
    for (;;) {
        ssize_t got = read(in, buffer, sizeof buffer);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            die("read for copy");
        if (got == 0)
            break;
        for (ssize_t done = 0; done < got;) {
            ssize_t put = write(out, buffer + done, got - done);
            if (put < 0 && errno != EINTR)
                die("write copy");
            if (put > 0)
                done += put;
        }
    }
    close(in);
    close(out);
}

/* Writes the entries of the open directory fd to a new file. */
static void copy_listing(int fd, char *copy, size_t size) {
    int dir_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0)
        die("open directory");
    DIR *dir = fdopendir(dir_fd);
    if (!dir)
        die("fdopendir");
    copy_name(copy, size, "dir");
    FILE *out = fopen(copy, "wx");
    if (!out)
        die("create listing");
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, ".."))
            continue;
        char id[96];
        char type;
        if (identity(dirfd(dir), entry->d_name, id, sizeof id, &type) != 0) {
            if (errno == ENOENT)
                continue; /* removed meanwhile: not part of this sync */
            die("statx entry");
        }
        fprintf(out, "%s\t%s\t%c\n", entry->d_name, id, type);
    }
    if (fclose(out) != 0)
        die("write listing");
    closedir(dir);
}

static void append_log(const char *line) {
    char log[PATH_MAX];
    snprintf(log, sizeof log, "%s/log", env("CRASHSIM_DIR"));
    int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        die("open log");
    size_t len = strlen(line);
    /* One write of a short line on O_APPEND: lines of concurrent processes never mix. */
    if (write(fd, line, len) != (ssize_t)len)
        die("append log");
    close(fd);
}

/* What a sync of fd will make durable, copied now; the log line to append once the
 * sync succeeded, or an empty string for a file outside CRASHSIM_ROOT. */
static void prepare(int fd, char *line, size_t size) {
    char path[PATH_MAX];
    line[0] = 0;
    if (!watched_path(fd, path, sizeof path))
        return;
    char id[96];
    char type;
    if (identity(fd, "", id, sizeof id, &type) != 0)
        die("statx");
    char copy[PATH_MAX];
    if (type == 'd')
        copy_listing(fd, copy, sizeof copy);
    else if (type == 'f')
        copy_file(fd, copy, sizeof copy);
    else
        return;
    snprintf(line, size, "%c\t%s\t%s\n", type == 'd' ? 'D' : 'F', id, copy);
}

static void finish(int result, const char *line) {
    if (!line[0])
        return;
    if (result == 0) {
        append_log(line);
    } else {
        /* The copy's path is the line's last field. */
        char copy[PATH_MAX];
        const char *last = strrchr(line, '\t');
        snprintf(copy, sizeof copy, "%s", last ? last + 1 : "");
        copy[strcspn(copy, "\n")] = 0;
        unlink(copy);
    }
}

/* Log lines gathered before they may be appended (a whole-tree sync). */
struct lines {
    char *text;
    size_t len, cap;
};

static void add_line(struct lines *lines, const char *line) {
    size_t len = strlen(line);
    if (lines->len + len + 1 > lines->cap) {
        lines->cap = (lines->len + len + 1) * 2;
        lines->text = realloc(lines->text, lines->cap);
        if (!lines->text)
            die("realloc");
    }
    memcpy(lines->text + lines->len, line, len + 1);
    lines->len += len;
}

/* Every directory and file below the open directory fd, as if each were synced. */
static void capture_tree(int fd, struct lines *lines) {
    char line[PATH_MAX + 128];
    prepare(fd, line, sizeof line);
    add_line(lines, line);
    int dir_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = dir_fd < 0 ? NULL : fdopendir(dir_fd);
    if (!dir)
        die("open directory");
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, ".."))
            continue;
        int child = openat(dirfd(dir), entry->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (child < 0)
            continue; /* gone, or a symlink */
        struct stat st;
        if (fstat(child, &st) == 0 && S_ISDIR(st.st_mode)) {
            capture_tree(child, lines);
        } else if (S_ISREG(st.st_mode)) {
            prepare(child, line, sizeof line);
            add_line(lines, line);
        }
        close(child);
    }
    closedir(dir);
}

/* The whole watched tree, captured now; logged by commit_root once synced. */
static struct lines capture_root(void) {
    struct lines lines = {0};
    const char *root = env("CRASHSIM_ROOT");
    if (!root || !env("CRASHSIM_DIR"))
        return lines;
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        die("open root");
    capture_tree(fd, &lines);
    close(fd);
    return lines;
}

static void commit_root(struct lines lines) {
    if (lines.text)
        append_log(lines.text);
    free(lines.text);
}

#define REAL(name, type) ((type)dlsym(RTLD_NEXT, name))

int fsync(int fd) {
    char line[PATH_MAX + 128];
    prepare(fd, line, sizeof line);
    int result = REAL("fsync", int (*)(int))(fd);
    int saved = errno;
    finish(result, line);
    errno = saved;
    return result;
}

int fdatasync(int fd) {
    char line[PATH_MAX + 128];
    prepare(fd, line, sizeof line);
    int result = REAL("fdatasync", int (*)(int))(fd);
    int saved = errno;
    finish(result, line);
    errno = saved;
    return result;
}

/* syncfs and sync make everything durable: the whole watched tree is captured
 * (a copy of every file), and logged once the call returned. */
int syncfs(int fd) {
    struct lines lines = capture_root();
    int result = REAL("syncfs", int (*)(int))(fd);
    if (result == 0)
        commit_root(lines);
    else
        free(lines.text);
    return result;
}

void sync(void) {
    struct lines lines = capture_root();
    REAL("sync", void (*)(void))();
    commit_root(lines);
}

#ifdef CRASHSIM_MAIN
/* crashsim base ROOT: records ROOT as it is now as the durable starting state. */
int main(int argc, char **argv) {
    if (argc != 3 || strcmp(argv[1], "base") != 0) {
        fprintf(stderr, "usage: CRASHSIM_DIR=DIR crashsim base ROOT\n");
        return 2;
    }
    char root[PATH_MAX];
    if (!realpath(argv[2], root))
        die("realpath");
    setenv("CRASHSIM_ROOT", root, 1);
    char id[96];
    int root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0 || identity(root_fd, "", id, sizeof id, NULL) != 0)
        die("statx root");
    close(root_fd);
    char line[256];
    snprintf(line, sizeof line, "R\t%s\n", id);
    append_log(line);
    commit_root(capture_root());
    return 0;
}
#endif
