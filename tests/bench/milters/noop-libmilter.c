/* A no-op milter on Sendmail's libmilter, the library benchmark's C anchor (the same
 * options as noop-milter-core and noop-indymilter):
 *
 *   noop-libmilter --socket inet:127.0.0.1:PORT|unix:PATH [--mode replied|nr] [--add-header]
 *
 * Every stage callback is registered and continues; end of message accepts (after adding
 * "X-Bench: yes" with --add-header). --mode nr asks for every SMFIP_NR_* flag the MTA
 * offers (callbacks then answer SMFIS_NOREPLY). Built by tests/bench/cases/library.sh:
 *   gcc -O2 -o noop-libmilter noop-libmilter.c -lmilter -pthread
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int nr_mode = 0;
static int add_header = 0;

#define NR_ALL (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | \
                SMFIP_NR_DATA | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY | SMFIP_NR_UNKN)

static sfsistat st(void) { return nr_mode ? SMFIS_NOREPLY : SMFIS_CONTINUE; }

static sfsistat x_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
                            unsigned long f2, unsigned long f3, unsigned long *pf0,
                            unsigned long *pf1, unsigned long *pf2, unsigned long *pf3) {
    (void)ctx; (void)f2; (void)f3;
    *pf0 = add_header ? (f0 & SMFIF_ADDHDRS) : 0;
    *pf1 = nr_mode ? (f1 & NR_ALL) : 0;
    *pf2 = 0;
    *pf3 = 0;
    return SMFIS_CONTINUE;
}
static sfsistat x_connect(SMFICTX *c, char *h, _SOCK_ADDR *a) { (void)c; (void)h; (void)a; return st(); }
static sfsistat x_helo(SMFICTX *c, char *h) { (void)c; (void)h; return st(); }
static sfsistat x_envfrom(SMFICTX *c, char **a) { (void)c; (void)a; return st(); }
static sfsistat x_envrcpt(SMFICTX *c, char **a) { (void)c; (void)a; return st(); }
static sfsistat x_data(SMFICTX *c) { (void)c; return st(); }
static sfsistat x_header(SMFICTX *c, char *n, char *v) { (void)c; (void)n; (void)v; return st(); }
static sfsistat x_eoh(SMFICTX *c) { (void)c; return st(); }
static sfsistat x_body(SMFICTX *c, unsigned char *b, size_t l) { (void)c; (void)b; (void)l; return st(); }
static sfsistat x_unknown(SMFICTX *c, const char *l) { (void)c; (void)l; return st(); }
static sfsistat x_eom(SMFICTX *c) {
    if (add_header && smfi_addheader(c, "X-Bench", "yes") != MI_SUCCESS)
        return SMFIS_TEMPFAIL;
    return SMFIS_ACCEPT;
}
static sfsistat x_abort(SMFICTX *c) { (void)c; return SMFIS_CONTINUE; }
static sfsistat x_close(SMFICTX *c) { (void)c; return SMFIS_CONTINUE; }

static int usage(void) {
    fprintf(stderr, "usage: noop-libmilter --socket inet:HOST:PORT|unix:PATH "
                    "[--mode replied|nr] [--add-header]\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *spec = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--socket") && i + 1 < argc) spec = argv[++i];
        else if (!strcmp(argv[i], "--mode") && i + 1 < argc) {
            const char *m = argv[++i];
            if (!strcmp(m, "nr")) nr_mode = 1;
            else if (strcmp(m, "replied")) return usage();
        } else if (!strcmp(argv[i], "--add-header")) add_header = 1;
        else return usage();
    }
    if (!spec) return usage();
    /* libmilter's own spelling: inet:PORT@HOST, unix:PATH. */
    char conn[512];
    if (!strncmp(spec, "inet:", 5)) {
        const char *colon = strrchr(spec + 5, ':');
        if (!colon) return usage();
        snprintf(conn, sizeof conn, "inet:%s@%.*s", colon + 1, (int)(colon - spec - 5), spec + 5);
    } else if (!strncmp(spec, "unix:", 5)) {
        unlink(spec + 5);
        snprintf(conn, sizeof conn, "%s", spec);
    } else return usage();

    struct smfiDesc desc = {
        "noop-libmilter", SMFI_VERSION,
        add_header ? SMFIF_ADDHDRS : 0,
        x_connect, x_helo, x_envfrom, x_envrcpt, x_header, x_eoh, x_body, x_eom,
        x_abort, x_close, x_unknown, x_data, x_negotiate,
    };
    if (smfi_setconn(conn) == MI_FAILURE) { fprintf(stderr, "smfi_setconn %s failed\n", conn); return 1; }
    /* The idle case holds 1,000 connections: a deep backlog, as for the Rust no-ops. */
    smfi_setbacklog(1024);
    if (smfi_register(desc) == MI_FAILURE) { fprintf(stderr, "smfi_register failed\n"); return 1; }
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
