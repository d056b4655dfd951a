"""The views: each gets ``(state, store, jobs)``, observes the state and the store, and draws its
own widgets; none knows the Explorer or another view."""
