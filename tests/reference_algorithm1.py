"""Plain NumPy references for Algorithm 1 (Zhu, Lin, Tang, section 4).

Two independent transcriptions of the paper's pseudocode, used only by the
tests and the benchmark (never by the package):

* :func:`algorithm1_loops` follows "Algorithm 1 Induction of one layer" line
  by line, neuron by neuron, with Python loops over ``j`` and ``i``.
* :func:`algorithm1_vectorised` is the same recursion with one NumPy matmul per
  layer and point; it is the "vectorised NumPy reference" of the benchmark.

Both take ``layers`` as a list of ``(W [fan_in, fan_out], b [fan_out])`` pairs,
input to output; the last pair is the linear output layer and is not counted.
The input layer is the paper's layer 1: ``L^1 = I`` and ``P^1 = 0``.
"""

from __future__ import annotations

import numpy as np


def algorithm1_loops(layers, x, r):
    """Returns ``(C, S, P, U)``; ``S, P, U`` are lists with one array per hidden layer."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[0]
    # Layer 1 (the input): L = identity, P = 0, U irrelevant (never read).
    L_prev = [np.eye(d)[i] for i in range(d)]
    P_prev = [0] * d
    U_prev = [0.0] * d
    X_prev = x.copy()
    S_all, P_all, U_all = [], [], []
    for W, b in layers[:-1]:
        W = np.asarray(W, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        m_in, m_out = W.shape
        A = np.array([sum(W[i, j] * X_prev[i] for i in range(m_in)) + b[j] for j in range(m_out)])
        P_new, S_new, U_new, L_new = [], [], [], []
        for j in range(m_out):
            U = 0.0
            L = np.zeros(d)
            for i in range(m_in):
                if P_prev[i] == 0:
                    L = L + W[i, j] * L_prev[i]
                else:
                    U = U + abs(W[i, j]) * U_prev[i]
            Uj = r * np.linalg.norm(L) + U
            Lj = None
            if A[j] < 0:
                if Uj + A[j] < 0:
                    Uj, Pj, Sj = 0.0, 0, 0
                    Lj = np.zeros(d)  # dead neuron: its linear map is 0 (proof of Prop. 1)
                else:
                    Uj, Pj, Sj = Uj + A[j], 1, 1
            else:
                if Uj < A[j]:
                    if U == 0:
                        Pj, Sj = 0, 0
                        Lj = L
                    else:
                        Pj, Sj = 1, 0
                else:
                    Pj, Sj = 1, 1
            P_new.append(Pj)
            S_new.append(Sj)
            U_new.append(Uj)
            L_new.append(Lj if Lj is not None else np.zeros(d))
        S_all.append(np.array(S_new, dtype=bool))
        P_all.append(np.array(P_new, dtype=bool))
        U_all.append(np.array(U_new))
        L_prev, P_prev, U_prev = L_new, P_new, U_new
        X_prev = np.maximum(A, 0.0)
    C = int(sum(s.sum() for s in S_all))
    return C, S_all, P_all, U_all


def algorithm1_vectorised(layers, x, r, dtype=np.float64):
    """Same outputs as :func:`algorithm1_loops`, one matmul per layer."""
    x = np.asarray(x, dtype=dtype)
    d = x.shape[0]
    L = np.eye(d, dtype=dtype)  # rows: linear maps of the current layer's neurons
    P = np.zeros(d, dtype=bool)
    U = np.zeros(d, dtype=dtype)
    h = x
    S_all, P_all, U_all = [], [], []
    for W, b in layers[:-1]:
        W = np.asarray(W, dtype=dtype)
        b = np.asarray(b, dtype=dtype)
        A = h @ W + b
        Lsum = W.T @ np.where(P[:, None], 0.0, L)
        Usum = np.abs(W).T @ np.where(P, U, 0.0)
        Unew = r * np.linalg.norm(Lsum, axis=1) + Usum
        neg = A < 0
        dead = neg & (Unew + A < 0)
        pos_stable = ~neg & (Unew < A)
        linear = pos_stable & (Usum == 0)
        S = ~dead & ~pos_stable
        Pn = ~(dead | linear)
        Unew = np.where(dead, 0.0, np.where(neg, Unew + A, Unew))
        L = np.where(linear[:, None], Lsum, 0.0)
        P, U = Pn, Unew
        S_all.append(S)
        P_all.append(Pn)
        U_all.append(Unew)
        h = np.maximum(A, 0.0)
    C = int(sum(s.sum() for s in S_all))
    return C, S_all, P_all, U_all
