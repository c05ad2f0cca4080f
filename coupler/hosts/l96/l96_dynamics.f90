!> Two-scale Lorenz-96 (Lorenz 1996): K slow variables X_k on a ring, each with J fast variables
!> Y_{j,k}; the fast ones form one ring of J*K (Y_{J+1,k} = Y_{1,k+1}).
!>   dX_k/dt     = -X_{k-1} (X_{k-2} - X_{k+1}) - X_k + F + U_k,  U_k = -(h c / b) sum_j Y_{j,k}
!>   dY_{j,k}/dt = -c b Y_{j+1,k} (Y_{j+2,k} - Y_{j-1,k}) - c Y_{j,k} + (h c / b) X_k
!> Truth: both scales, RK4. Coarse: X only, U_k from a parameterization evaluated at every RK4
!> stage. Double precision: the host's state.
!>
!> The kernels work on a block of n slow variables (and its J n fast ones) with halos, so that
!> the host runs them on each MPI rank's block after a halo exchange: x(-1 : n+1) (the slow
!> tendency reads X_{k-2}, X_{k-1}, X_{k+1}), y(0 : J n + 2). A step is RK4_STAGES stages of
!> "halos, tendencies, rk4_update". truth_step and coarse_step run the same kernels on one
!> whole ring, its halos filled from the ring itself: what the unit test checks.
module l96_dynamics
  use, intrinsic :: iso_fortran_env, only: dp => real64
  implicit none
  private

  public :: dp, l96_params_t, slow_tendency, fast_tendency, coupling_term, truth_tendencies, &
            rk4_update, truth_step, coarse_step, closure_iface

  integer, parameter, public :: RK4_STAGES = 4
  !> halo widths the kernels read: x(1 - X_HALO_LEFT : n + X_HALO_RIGHT), y likewise
  integer, parameter, public :: X_HALO_LEFT = 2, X_HALO_RIGHT = 1, Y_HALO_LEFT = 1, &
                                Y_HALO_RIGHT = 2

  type :: l96_params_t
    integer :: k = 8          !< slow variables ("columns")
    integer :: j = 32         !< fast variables per slow one
    real(dp) :: f = 20, h = 1, b = 10, c = 10
  end type l96_params_t

  abstract interface
    !> u(k) = the parameterized coupling term for the slow state x(k); status /= 0 stops the run.
    subroutine closure_iface(x, u, stat)
      import :: dp
      real(dp), intent(in) :: x(:)
      real(dp), intent(out) :: u(:)
      integer, intent(out) :: stat
    end subroutine closure_iface
  end interface

contains

  !> dX_k/dt of a block of n = size(dx) slow variables.
  pure subroutine slow_tendency(f, x, u, dx)
    real(dp), intent(in) :: f          !! the forcing F
    real(dp), intent(in) :: x(-1:)     !! X of the block, k = 1..n, with its halo (-1, 0, n+1)
    real(dp), intent(in) :: u(:)       !! the coupling term U_k of the block
    real(dp), intent(out) :: dx(:)     !! dX_k/dt, k = 1..n
    integer :: k
    do k = 1, size(dx)
      dx(k) = -x(k - 1) * (x(k - 2) - x(k + 1)) - x(k) + f + u(k)
    end do
  end subroutine slow_tendency

  !> U_k = -(h c / b) sum_j Y_{j,k} of a block of n = size(u) slow variables.
  pure subroutine coupling_term(p, y, u)
    type(l96_params_t), intent(in) :: p
    real(dp), intent(in) :: y(0:)      !! Y of the block, i = 1..J n (the halo is not read)
    real(dp), intent(out) :: u(:)      !! U_k, k = 1..n
    integer :: k
    do k = 1, size(u)
      u(k) = -(p%h * p%c / p%b) * sum(y((k - 1) * p%j + 1:k * p%j))
    end do
  end subroutine coupling_term

  !> dY_i/dt of a block of J n = size(dy) fast variables (Y_i belongs to X_{(i-1)/J + 1}).
  pure subroutine fast_tendency(p, x, y, dy)
    type(l96_params_t), intent(in) :: p
    real(dp), intent(in) :: x(-1:)     !! X of the block, k = 1..n (the halo is not read)
    real(dp), intent(in) :: y(0:)      !! Y of the block, i = 1..J n, with its halo (0, Jn+1, Jn+2)
    real(dp), intent(out) :: dy(:)     !! dY_i/dt, i = 1..J n
    integer :: i
    do i = 1, size(dy)
      dy(i) = -p%c * p%b * y(i + 1) * (y(i + 2) - y(i - 1)) - p%c * y(i) + &
              (p%h * p%c / p%b) * x((i - 1) / p%j + 1)
    end do
  end subroutine fast_tendency

  !> One truth stage's tendencies of a block whose halos are filled; u is its coupling term.
  pure subroutine truth_tendencies(p, x, y, u, dx, dy)
    type(l96_params_t), intent(in) :: p
    real(dp), intent(in) :: x(-1:)     !! X of the block with its halo
    real(dp), intent(in) :: y(0:)      !! Y of the block with its halo
    real(dp), intent(out) :: u(:)      !! U_k of the block
    real(dp), intent(out) :: dx(:)     !! dX_k/dt
    real(dp), intent(out) :: dy(:)     !! dY_i/dt
    call coupling_term(p, y, u)
    call slow_tendency(p%f, x, u, dx)
    call fast_tendency(p, x, y, dy)
  end subroutine truth_tendencies

  !> After the tendency k(:, stage) of RK4 stage `stage`: the state of the next stage,
  !> xs = x + c dt k(:, stage) (c = 1/2, 1/2, 1), or after the last stage the step itself,
  !> x = x + dt/6 (k1 + 2 k2 + 2 k3 + k4). Slow and fast variables alike (no halos here).
  pure subroutine rk4_update(stage, dt, x, k, xs)
    integer, intent(in) :: stage         !! 1 .. RK4_STAGES
    real(dp), intent(in) :: dt
    real(dp), intent(inout) :: x(:)      !! the state at the start of the step (the step's end at the last stage)
    real(dp), intent(in) :: k(:, :)      !! the tendencies of the stages so far, (size(x), RK4_STAGES)
    real(dp), intent(inout) :: xs(:)     !! the state of the next stage (stages 1 to 3)
    select case (stage)
    case (1, 2)
      xs = x + 0.5_dp * dt * k(:, stage)
    case (3)
      xs = x + dt * k(:, 3)
    case default
      x = x + dt / 6 * (k(:, 1) + 2 * k(:, 2) + 2 * k(:, 3) + k(:, 4))
    end select
  end subroutine rk4_update

  !> One RK4 step of the two-scale truth on the whole ring (one process).
  pure subroutine truth_step(p, dt, x, y)
    type(l96_params_t), intent(in) :: p
    real(dp), intent(in) :: dt
    real(dp), intent(inout) :: x(p%k), y(p%j * p%k)
    real(dp) :: xh(-1:p%k + 1), xsh(-1:p%k + 1), yh(0:p%j * p%k + 2), ysh(0:p%j * p%k + 2)
    real(dp) :: kx(p%k, RK4_STAGES), ky(p%j * p%k, RK4_STAGES), u(p%k)
    integer :: stage, nf
    nf = p%j * p%k
    xh(1:p%k) = x
    yh(1:nf) = y
    do stage = 1, RK4_STAGES
      if (stage == 1) then
        call fill_ring(xh, X_HALO_LEFT, X_HALO_RIGHT)
        call fill_ring(yh, Y_HALO_LEFT, Y_HALO_RIGHT)
        call truth_tendencies(p, xh, yh, u, kx(:, stage), ky(:, stage))
      else
        call fill_ring(xsh, X_HALO_LEFT, X_HALO_RIGHT)
        call fill_ring(ysh, Y_HALO_LEFT, Y_HALO_RIGHT)
        call truth_tendencies(p, xsh, ysh, u, kx(:, stage), ky(:, stage))
      end if
      call rk4_update(stage, dt, xh(1:p%k), kx, xsh(1:p%k))
      call rk4_update(stage, dt, yh(1:nf), ky, ysh(1:nf))
    end do
    x = xh(1:p%k)
    y = yh(1:nf)
  end subroutine truth_step

  !> One RK4 step of the coarse model on the whole ring (one process); the closure is evaluated
  !> at every stage.
  subroutine coarse_step(p, dt, x, closure, stat)
    type(l96_params_t), intent(in) :: p
    real(dp), intent(in) :: dt
    real(dp), intent(inout) :: x(p%k)
    procedure(closure_iface) :: closure
    integer, intent(out) :: stat
    real(dp) :: xh(-1:p%k + 1), xsh(-1:p%k + 1), kx(p%k, RK4_STAGES), u(p%k)
    integer :: stage
    xh(1:p%k) = x
    do stage = 1, RK4_STAGES
      if (stage == 1) then
        call fill_ring(xh, X_HALO_LEFT, X_HALO_RIGHT)
        call closure(xh(1:p%k), u, stat)
        if (stat /= 0) return
        call slow_tendency(p%f, xh, u, kx(:, stage))
      else
        call fill_ring(xsh, X_HALO_LEFT, X_HALO_RIGHT)
        call closure(xsh(1:p%k), u, stat)
        if (stat /= 0) return
        call slow_tendency(p%f, xsh, u, kx(:, stage))
      end if
      call rk4_update(stage, dt, xh(1:p%k), kx, xsh(1:p%k))
    end do
    x = xh(1:p%k)
  end subroutine coarse_step

  !> The halos of a whole periodic ring from its own other end (what the MPI halo exchange
  !> does between the ranks' blocks).
  pure subroutine fill_ring(a, hl, hr)
    real(dp), intent(inout) :: a(:)    !! hl halo values, the ring, hr halo values
    integer, intent(in) :: hl, hr      !! the halo widths
    integer :: n
    n = size(a) - hl - hr
    a(1:hl) = a(n + 1:n + hl)
    a(hl + n + 1:hl + n + hr) = a(hl + 1:hl + hr)
  end subroutine fill_ring
end module l96_dynamics
