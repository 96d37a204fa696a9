/* A FUSE file system that accepts writes and keeps only file sizes: the ceiling of a FUSE
 * write path on this machine (what runsc's writes cost before the server does any work).
 * Optional: SINK_SHA=1 hashes every 4 KiB page of each write with OpenSSL's SHA-256 (the
 * work a podsnap write path must do before acknowledging or buffering). */
#define FUSE_USE_VERSION 35
#include <fuse.h>
#include <errno.h>
#include <string.h>
#include <stdlib.h>
#include <pthread.h>
#include <sys/stat.h>
#include <openssl/sha.h>

#define MAXF 64
static struct { char name[256]; off_t size; int dir; } files[MAXF];
static int nfiles;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int do_sha;

static int find(const char *p) { for (int i = 0; i < nfiles; i++) if (!strcmp(files[i].name, p)) return i; return -1; }

static void *s_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    cfg->kernel_cache = 0; cfg->direct_io = 0;
    conn->max_write = 1 << 20;
    return NULL;
}
static int s_getattr(const char *p, struct stat *st, struct fuse_file_info *fi) {
    memset(st, 0, sizeof *st);
    if (!strcmp(p, "/")) { st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; return 0; }
    pthread_mutex_lock(&mu); int i = find(p); int r = -ENOENT;
    if (i >= 0) { r = 0; if (files[i].dir) { st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; } else { st->st_mode = S_IFREG | 0644; st->st_nlink = 1; st->st_size = files[i].size; } }
    pthread_mutex_unlock(&mu); return r;
}
static int add(const char *p, int dir) {
    pthread_mutex_lock(&mu); int i = find(p);
    if (i < 0 && nfiles < MAXF) { i = nfiles++; strncpy(files[i].name, p, 255); files[i].dir = dir; }
    if (i >= 0 && !dir) files[i].size = 0;
    pthread_mutex_unlock(&mu); return i < 0 ? -ENOSPC : 0;
}
static int s_mkdir(const char *p, mode_t m) { return add(p, 1); }
static int s_create(const char *p, mode_t m, struct fuse_file_info *fi) { return add(p, 0); }
static int s_open(const char *p, struct fuse_file_info *fi) { return find(p) >= 0 ? 0 : -ENOENT; }
static int s_truncate(const char *p, off_t s, struct fuse_file_info *fi) { pthread_mutex_lock(&mu); int i = find(p); if (i >= 0) files[i].size = s; pthread_mutex_unlock(&mu); return i >= 0 ? 0 : -ENOENT; }
static int s_write(const char *p, const char *buf, size_t n, off_t off, struct fuse_file_info *fi) {
    if (do_sha) { unsigned char md[32]; for (size_t o = 0; o < n; o += 4096) SHA256((const unsigned char *)buf + o, n - o < 4096 ? n - o : 4096, md); }
    pthread_mutex_lock(&mu); int i = find(p); if (i >= 0 && off + (off_t)n > files[i].size) files[i].size = off + n; pthread_mutex_unlock(&mu);
    return n;
}
static int s_read(const char *p, char *buf, size_t n, off_t off, struct fuse_file_info *fi) { return 0; }
static int s_fsync(const char *p, int d, struct fuse_file_info *fi) { return 0; }
static int s_unlink(const char *p) {
    pthread_mutex_lock(&mu); int i = find(p); if (i >= 0) files[i] = files[--nfiles]; pthread_mutex_unlock(&mu);
    return i >= 0 ? 0 : -ENOENT;
}
static int s_utimens(const char *p, const struct timespec tv[2], struct fuse_file_info *fi) { return 0; }
static int s_chmod(const char *p, mode_t m, struct fuse_file_info *fi) { return 0; }
static int s_readdir(const char *p, void *b, fuse_fill_dir_t f, off_t o, struct fuse_file_info *fi, enum fuse_readdir_flags fl) {
    f(b, ".", NULL, 0, 0); f(b, "..", NULL, 0, 0);
    pthread_mutex_lock(&mu); size_t pl = strlen(p);
    for (int i = 0; i < nfiles; i++) { const char *n = files[i].name; if (!strncmp(n, p, pl) && (pl == 1 || n[pl] == '/') && !strchr(n + (pl == 1 ? 1 : pl + 1), '/')) f(b, n + (pl == 1 ? 1 : pl + 1), NULL, 0, 0); }
    pthread_mutex_unlock(&mu); return 0;
}
static const struct fuse_operations ops = {
    .init = s_init, .getattr = s_getattr, .mkdir = s_mkdir, .create = s_create, .open = s_open,
    .truncate = s_truncate, .write = s_write, .read = s_read, .fsync = s_fsync, .unlink = s_unlink, .rmdir = s_unlink,
    .utimens = s_utimens, .chmod = s_chmod, .readdir = s_readdir,
};
int main(int argc, char **argv) { do_sha = getenv("SINK_SHA") != NULL; return fuse_main(argc, argv, &ops, NULL); }
