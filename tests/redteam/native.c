/* A native extension a hostile recipe loads: each call makes one system call directly, past
 * anything Python could watch. Raises OSError naming the call when the kernel refuses it;
 * returns what the call returned when it did not. Built by the red-team tests. */
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static PyObject *refused(const char *what) {
    int e = errno;
    char msg[256];
    snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
    PyObject *args = Py_BuildValue("(is)", e, msg);
    PyErr_SetObject(PyExc_OSError, args);
    Py_DECREF(args);
    return NULL;
}

static long try_connect(int family, const char *arg, int abstract) {
    int s = socket(family, SOCK_STREAM, 0);
    if (s < 0) return -1;
    int rc;
    if (family == AF_INET) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(arg))};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        rc = connect(s, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path + (abstract ? 1 : 0), arg, sizeof a.sun_path - 2);
        rc = connect(s, (struct sockaddr *)&a, sizeof a);
    }
    return rc < 0 ? -1 : s;
}

static PyObject *attempt(PyObject *self, PyObject *args) {
    const char *name, *arg = "";
    if (!PyArg_ParseTuple(args, "s|s", &name, &arg)) return NULL;
    long r = -1;
    if (!strcmp(name, "fork")) {
        r = fork();
        if (r == 0) _exit(0);
        if (r > 0) waitpid(r, NULL, 0);
    } else if (!strcmp(name, "vfork")) {
        r = syscall(SYS_vfork);
        if (r == 0) _exit(0);
    } else if (!strcmp(name, "clone3")) {
        r = syscall(435, NULL, 0);
    } else if (!strcmp(name, "forkbomb")) {
        long n = 0;
        for (int i = 0; i < 256; i++) {  /* bounded, so a wall that fails cannot take the machine down */
            pid_t p = fork();
            if (p < 0) break;
            if (p == 0) { sleep(5); _exit(0); }
            n++;
        }
        if (n == 0) return refused("fork");
        return PyLong_FromLong(n);
    } else if (!strcmp(name, "execve")) {
        char *argv[] = {"/bin/true", NULL};
        r = execve("/bin/true", argv, NULL);
    } else if (!strcmp(name, "tcp")) {
        r = try_connect(AF_INET, arg, 0);
    } else if (!strcmp(name, "unix")) {
        r = try_connect(AF_UNIX, arg, 0);
    } else if (!strcmp(name, "abstract")) {
        r = try_connect(AF_UNIX, arg, 1);
    } else if (!strcmp(name, "x32socket")) {
        r = syscall(0x40000000 | 41, AF_INET, SOCK_STREAM, 0);
    } else if (!strcmp(name, "ptrace")) {
        r = ptrace(PTRACE_ATTACH, (pid_t)atoi(arg), NULL, NULL);
    } else if (!strcmp(name, "mount")) {
        r = mount("none", arg, "tmpfs", 0, NULL);
    } else if (!strcmp(name, "unshare")) {
        r = unshare(CLONE_NEWUSER | CLONE_NEWNS);
    } else if (!strcmp(name, "kill")) {
        r = kill((pid_t)atoi(arg), SIGKILL);
    } else if (!strcmp(name, "io_uring")) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        r = syscall(__NR_io_uring_setup, 4, &p);
    } else if (!strcmp(name, "bpf")) {
        char attr[128];
        memset(attr, 0, sizeof attr);
        r = syscall(__NR_bpf, 0, attr, sizeof attr);
    } else if (!strcmp(name, "read")) {
        int fd = open(arg, O_RDONLY);
        if (fd >= 0) {
            char buf[4096];
            r = read(fd, buf, sizeof buf);
            close(fd);
        }
    } else {
        PyErr_SetString(PyExc_ValueError, name);
        return NULL;
    }
    if (r < 0) return refused(name);
    return PyLong_FromLong(r);
}

static PyMethodDef methods[] = {{"attempt", attempt, METH_VARARGS, "one system call"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "redteam_native", NULL, -1, methods};
PyMODINIT_FUNC PyInit_redteam_native(void) { return PyModule_Create(&module); }
