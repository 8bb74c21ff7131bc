#define _GNU_SOURCE
#include "CHDF5Probe.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Child exit status meaning "libhdf5 refused the file", message on the pipe. Any other ending is a crash. */
#define REFUSED_EXIT_STATUS 97

static herr_t keep_innermost(unsigned depth, const H5E_error2_t *error, void *data) {
    if (depth == 0 && error->desc != NULL) {
        snprintf((char *)data, 512, "%s", error->desc);
    }
    return 0;
}

static herr_t check_attribute(hid_t object, const char *name, const H5A_info_t *info, void *data) {
    (void)info; (void)data;
    hid_t attribute = H5Aopen(object, name, H5P_DEFAULT);
    if (attribute < 0) return -1;
    hid_t type = H5Aget_type(attribute);
    hid_t space = H5Aget_space(attribute);
    herr_t result = (type < 0 || space < 0 || H5Sget_simple_extent_npoints(space) < 0) ? -1 : 0;
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    H5Aclose(attribute);
    return result;
}

struct link_name_visit { bn_link_name_visitor visit; void *client; };

/* The link-info argument's type differs between 1.10 and 1.12, hence the trampoline. */
#if H5_VERSION_GE(1, 12, 0)
static herr_t link_name_trampoline(hid_t group, const char *name, const H5L_info2_t *info, void *data) {
#else
static herr_t link_name_trampoline(hid_t group, const char *name, const H5L_info_t *info, void *data) {
#endif
    (void)group; (void)info;
    struct link_name_visit *visit = (struct link_name_visit *)data;
    return visit->visit(name, visit->client);
}

herr_t bn_visit_link_names(hid_t group, bn_link_name_visitor visit, void *client) {
    struct link_name_visit context = { visit, client };
    hsize_t index = 0;
#if H5_VERSION_GE(1, 12, 0)
    return H5Literate2(group, H5_INDEX_NAME, H5_ITER_INC, &index, link_name_trampoline, &context);
#else
    return H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, &index, link_name_trampoline, &context);
#endif
}

static int accept_name(const char *name, void *client) {
    (void)name; (void)client;
    return 0;
}

static herr_t check_object(hid_t object) {
    hsize_t index = 0;
    if (H5Aiterate2(object, H5_INDEX_NAME, H5_ITER_INC, &index, check_attribute, NULL) < 0) return -1;
    switch (H5Iget_type(object)) {
    case H5I_GROUP:
        return bn_visit_link_names(object, accept_name, NULL) < 0 ? -1 : 0;
    case H5I_DATASET: {
        hid_t space = H5Dget_space(object);
        hid_t type = H5Dget_type(object);
        hid_t properties = H5Dget_create_plist(object);
        herr_t result = (space < 0 || type < 0 || properties < 0 || H5Sget_simple_extent_npoints(space) < 0) ? -1 : 0;
        (void)H5Dget_storage_size(object); /* walks the chunk index */
        if (space >= 0) H5Sclose(space);
        if (type >= 0) H5Tclose(type);
        if (properties >= 0) H5Pclose(properties);
        return result;
    }
    default:
        return 0;
    }
}

#if H5_VERSION_GE(1, 12, 0)
static herr_t visit_object(hid_t root, const char *name, const H5O_info2_t *info, void *data) {
#else
static herr_t visit_object(hid_t root, const char *name, const H5O_info_t *info, void *data) {
#endif
    (void)info; (void)data;
    hid_t object = H5Oopen(root, name, H5P_DEFAULT);
    if (object < 0) return -1;
    herr_t result = check_object(object);
    H5Oclose(object);
    return result;
}

/* The child's whole life: walk, report, _exit (never exit(): libhdf5's atexit handler would flush files the
   parent has open, from a copy of its state). */
static void walk_in_child(const char *path, int report) {
    /* A crash here is the answer, not an event: no crash report or core file (Swift's backtracer
       installed handlers in the parent). */
    int crash_signals[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP };
    for (size_t i = 0; i < sizeof crash_signals / sizeof crash_signals[0]; i++) signal(crash_signals[i], SIG_DFL);
    struct rlimit no_core = { 0, 0 };
    setrlimit(RLIMIT_CORE, &no_core);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    herr_t result = -1;
    if (file >= 0) {
#if H5_VERSION_GE(1, 12, 0)
        result = H5Ovisit3(file, H5_INDEX_NAME, H5_ITER_INC, visit_object, NULL, H5O_INFO_BASIC);
#else
        result = H5Ovisit2(file, H5_INDEX_NAME, H5_ITER_INC, visit_object, NULL, H5O_INFO_BASIC);
#endif
    }
    if (result >= 0) _exit(0);
    char message[512] = "libhdf5 could not read it";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, keep_innermost, message);
    ssize_t ignored = write(report, message, strlen(message));
    (void)ignored;
    _exit(REFUSED_EXIT_STATUS);
}

enum bn_probe_outcome bn_probe_hdf5_structure(const char *path, int timeout_seconds, char *message, size_t message_size) {
    if (message_size > 0) message[0] = 0;
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
        snprintf(message, message_size, "cannot create a pipe (%s)", strerror(errno));
        return BN_PROBE_UNAVAILABLE;
    }
    pid_t child = fork();
    if (child < 0) {
        snprintf(message, message_size, "cannot start a process (%s)", strerror(errno));
        close(report[0]);
        close(report[1]);
        return BN_PROBE_UNAVAILABLE;
    }
    if (child == 0) {
        close(report[0]);
        walk_in_child(path, report[1]);
    }
    close(report[1]);
    int child_status = 0;
    struct timespec pause = { 0, 200 * 1000 };
    long waited_ns = 0;
    pid_t ended;
    while ((ended = waitpid(child, &child_status, WNOHANG)) == 0 || (ended < 0 && errno == EINTR)) {
        if (waited_ns >= (long)timeout_seconds * 1000000000L) {
            kill(child, SIGKILL);
            waitpid(child, &child_status, 0);
            close(report[0]);
            snprintf(message, message_size, "libhdf5 was still reading it after %d s: it is damaged so that libhdf5 loops (or its file system is stuck)",
                     timeout_seconds);
            return BN_PROBE_TIMED_OUT;
        }
        nanosleep(&pause, NULL);
        waited_ns += pause.tv_nsec;
        if (pause.tv_nsec < 20 * 1000 * 1000) pause.tv_nsec *= 2;
    }
    if (WIFEXITED(child_status) && WEXITSTATUS(child_status) == 0) {
        close(report[0]);
        return BN_PROBE_READ;
    }
    if (WIFEXITED(child_status) && WEXITSTATUS(child_status) == REFUSED_EXIT_STATUS) {
        ssize_t length = message_size > 0 ? read(report[0], message, message_size - 1) : 0;
        if (length >= 0 && message_size > 0) message[length] = 0;
        close(report[0]);
        return BN_PROBE_REFUSED;
    }
    close(report[0]);
    if (WIFSIGNALED(child_status)) {
        snprintf(message, message_size, "libhdf5 crashed reading it (%s, in a separate process)", strsignal(WTERMSIG(child_status)));
    } else {
        snprintf(message, message_size, "libhdf5 crashed reading it (exit status %d, in a separate process)", WEXITSTATUS(child_status));
    }
    return BN_PROBE_CRASHED;
}
