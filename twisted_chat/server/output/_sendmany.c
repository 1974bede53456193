/*
 * The fan-out's send loop in C: one batch of bytes to many sockets, with the
 * GIL released once for all of them instead of once per socket.
 * twisted_chat/server/output/sendqueue.py (DirectPass) uses it when it was built, and
 * a map over socket.send (send_each) otherwise; docs/fanout.md, "The direct pass".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

static PyObject *fileno_name;

/*
 * The head of CPython's socket object (Modules/socketmodule.h,
 * PySocketSockObject: the descriptor first, -1 once closed), so the loop can
 * read each socket's descriptor without calling its fileno() method: that call
 * was about a tenth of the server's instructions per lobby line with 100 members
 * (callgrind).  Used only for the two exact types whose fileno() is the C one,
 * and only when the module's start found the layout to agree with fileno() on a
 * live and a closed socket (check_layout); otherwise fileno() is called.
 */
typedef struct {
    PyObject_HEAD
    int sock_fd;
    int sock_family;
    int sock_type;
} socket_head;

static PyTypeObject *read_types[2];

static int
read_fd(PyObject *sock, long *fd)
{
    PyTypeObject *type = Py_TYPE(sock);
    if (type == read_types[0] || type == read_types[1]) {
        *fd = ((socket_head *)sock)->sock_fd;
        return 0;
    }
    PyObject *v = PyObject_CallMethodNoArgs(sock, fileno_name);
    if (v == NULL)
        return -1;
    *fd = PyLong_AsLong(v);
    Py_DECREF(v);
    return *fd == -1 && PyErr_Occurred() ? -1 : 0;
}

/*
 * send_many(sockets, data): send data on each socket (non-blocking, retried
 * on EINTR as socket.send is).  None when every socket took all of it;
 * otherwise a list of what each took, 0 where the send failed (full, or
 * closed: fileno() -1), for the caller to finish on Twisted's own path.
 */
static PyObject *
send_many(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_many(sockets, data) takes 2 arguments");
        return NULL;
    }
    /*
     * A tuple of its own, not the caller's list: a fileno() may run Python
     * code that changes the list (PySequence_Fast's items would then point
     * at freed objects), and the tuple's references keep every socket
     * alive while the GIL is released.
     */
    PyObject *socks = PySequence_Tuple(args[0]);
    if (socks == NULL)
        return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0) {
        Py_DECREF(socks);
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(socks);
    int *fds = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int));
    Py_ssize_t *sent = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Py_ssize_t));
    PyObject *result = NULL;
    if (fds == NULL || sent == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v;
        if (read_fd(PyTuple_GET_ITEM(socks, i), &v) < 0)
            goto done;
        fds[i] = v < 0 || v > INT_MAX ? -1 : (int)v;
    }
    int short_one = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        ssize_t r = -1;
        if (fds[i] >= 0) {
            do {
                r = send(fds[i], data.buf, (size_t)data.len, MSG_DONTWAIT | MSG_NOSIGNAL);
            } while (r < 0 && errno == EINTR);
        }
        sent[i] = r < 0 ? 0 : (Py_ssize_t)r;
        if (sent[i] != data.len)
            short_one = 1;
    }
    Py_END_ALLOW_THREADS
    if (!short_one) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = PyList_New(n);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromSsize_t(sent[i]);
        if (v == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, v);
    }
done:
    PyMem_Free(fds);
    PyMem_Free(sent);
    PyBuffer_Release(&data);
    Py_DECREF(socks);
    return result;
}

static PyObject *layout_checked(PyObject *, PyObject *);

static PyMethodDef methods[] = {
    {"send_many", (PyCFunction)(void (*)(void))send_many, METH_FASTCALL,
     "send_many(sockets, data) -> None if every socket took all of data,\n"
     "else a list of the bytes each took (0 where its send failed)."},
    {"layout_checked", layout_checked, METH_NOARGS,
     "True if send_many reads each socket's descriptor from the object\n"
     "(the layout was checked at import), False if it calls fileno()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sendmany", "The fan-out's send loop in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

/*
 * Whether socket_head agrees with a socket of this type: the descriptor,
 * family and type that fileno(), .family and .type give on an open one, and
 * -1 once it is closed.  1 yes, 0 no, -1 error.
 */
static int
head_agrees(PyObject *cls)
{
    PyObject *sock = PyObject_CallNoArgs(cls);  /* AF_INET, SOCK_STREAM */
    if (sock == NULL)
        return -1;
    int agrees = 0;
    PyObject *fd = PyObject_CallMethodNoArgs(sock, fileno_name);
    PyObject *closed = NULL;
    if (fd == NULL)
        goto done;
    long v = PyLong_AsLong(fd);
    socket_head *head = (socket_head *)sock;
    if (v >= 0 && head->sock_fd == v && head->sock_family == AF_INET
            && head->sock_type == SOCK_STREAM) {
        closed = PyObject_CallMethod(sock, "close", NULL);
        if (closed == NULL)
            goto done;
        agrees = head->sock_fd == -1;
    }
done:
    Py_XDECREF(closed);
    Py_XDECREF(fd);
    Py_DECREF(sock);
    if (PyErr_Occurred())
        return -1;
    return agrees;
}

/* check_layout's step for one type: a failure (no socket to be had, say) only
 * means fileno() is called, not that the module cannot load. */
static int
agrees_or_no(PyObject *cls)
{
    if (!PyType_Check(cls))
        return 0;
    int agrees = head_agrees(cls);
    if (agrees < 0) {
        PyErr_Clear();
        return 0;
    }
    return agrees;
}

/* Fill read_types with socket.socket and _socket.socket if both agree. */
static int
check_layout(void)
{
    const char *names[2][2] = {{"socket", "socket"}, {"_socket", "socket"}};
    PyTypeObject *found[2];
    for (int i = 0; i < 2; i++) {
        PyObject *mod = PyImport_ImportModule(names[i][0]);
        if (mod == NULL)
            return -1;
        PyObject *cls = PyObject_GetAttrString(mod, names[i][1]);
        Py_DECREF(mod);
        if (cls == NULL)
            return -1;
        int agrees = agrees_or_no(cls);
        found[i] = (PyTypeObject *)cls;
        Py_DECREF(cls);  /* its module keeps the class alive */
        if (!agrees)
            return 0;
    }
    read_types[0] = found[0];
    read_types[1] = found[1];
    return 0;
}

/* layout_checked() -> True if send_many reads descriptors without fileno(). */
static PyObject *
layout_checked(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(args))
{
    return PyBool_FromLong(read_types[0] != NULL);
}

PyMODINIT_FUNC
PyInit__sendmany(void)
{
    fileno_name = PyUnicode_InternFromString("fileno");
    if (fileno_name == NULL)
        return NULL;
    if (check_layout() < 0)
        return NULL;
    return PyModule_Create(&module);
}
