/*
 * The fan-out's send loop in C: one batch of bytes to many sockets, with the
 * GIL released once for all of them instead of once per socket.
 * twisted_chat/server/output/sendqueue.py (send_all) uses it when it was built, and
 * a map over socket.send otherwise; docs/fanout.md, "The direct pass".
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
        PyObject *fd = PyObject_CallMethodNoArgs(PyTuple_GET_ITEM(socks, i), fileno_name);
        if (fd == NULL)
            goto done;
        long v = PyLong_AsLong(fd);
        Py_DECREF(fd);
        if (v == -1 && PyErr_Occurred())
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

static PyMethodDef methods[] = {
    {"send_many", (PyCFunction)(void (*)(void))send_many, METH_FASTCALL,
     "send_many(sockets, data) -> None if every socket took all of data,\n"
     "else a list of the bytes each took (0 where its send failed)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sendmany", "The fan-out's send loop in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__sendmany(void)
{
    fileno_name = PyUnicode_InternFromString("fileno");
    if (fileno_name == NULL)
        return NULL;
    return PyModule_Create(&module);
}
