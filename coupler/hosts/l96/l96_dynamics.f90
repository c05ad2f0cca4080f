!> Two-scale Lorenz-96 (Lorenz 1996): K slow variables X_k on a ring, each with J fast variables
!> Y_{j,k}; the fast ones form one ring of J*K (Y_{J+1,k} = Y_{1,k+1}).
!>   dX_k/dt     = -X_{k-1} (X_{k-2} - X_{k+1}) - X_k + F + U_k,  U_k = -(h c / b) sum_j Y_{j,k}
!>   dY_{j,k}/dt = -c b Y_{j+1,k} (Y_{j+2,k} - Y_{j-1,k}) - c Y_{j,k} + (h c / b) X_k
!> Truth: both scales, RK4. Coarse: X only, U_k from a parameterization evaluated at every RK4
!> stage through a callback (the coupler in the host). Double precision: the host's state.
module l96_dynamics
  use, intrinsic :: iso_fortran_env, only: dp => real64
  implicit none
  private

  public :: dp, l96_params_t, slow_tendency, fast_tendency, coupling_term, truth_step, &
            coarse_step, closure_iface

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

  pure subroutine slow_tendency(p, x, u, dx)
    type(l96_params_t), intent(in) :: p
    real(dp), intent(in) :: x(p%k), u(p%k)
    real(dp), intent(out) :: dx(p%k)
    integer :: k, km1, km2, kp1
    do k = 1, p%k
      km1 = modulo(k - 2, p%k) + 1
      km2 = modulo(k - 3, p%k) + 1
      kp1 = modulo(k, p%k) + 1
      dx(k) = -x(km1) * (x(km2) - x(kp1)) - x(k) + p%f + u(k)
    end do
  end subroutine slow_tendency

  pure subroutine coupling_term(p, y, u)
    type(l96_params_t), intent(in) :: p
    real(dp), intent(in) :: y(p%j, p%k)
    real(dp), intent(out) :: u(p%k)
    u = -(p%h * p%c / p%b) * sum(y, dim=1)
  end subroutine coupling_term

  pure subroutine fast_tendency(p, x, y, dy)
    type(l96_params_t), intent(in) :: p
    real(dp), intent(in) :: x(p%k), y(p%j * p%k)
    real(dp), intent(out) :: dy(p%j * p%k)
    integer :: i, n, ip1, ip2, im1
    n = p%j * p%k
    do i = 1, n
      ip1 = modulo(i, n) + 1
      ip2 = modulo(i + 1, n) + 1
      im1 = modulo(i - 2, n) + 1
      dy(i) = -p%c * p%b * y(ip1) * (y(ip2) - y(im1)) - p%c * y(i) + &
              (p%h * p%c / p%b) * x((i - 1) / p%j + 1)
    end do
  end subroutine fast_tendency

  !> One RK4 step of the two-scale truth.
  pure subroutine truth_step(p, dt, x, y)
    type(l96_params_t), intent(in) :: p
    real(dp), intent(in) :: dt
    real(dp), intent(inout) :: x(p%k), y(p%j * p%k)
    real(dp), dimension(p%k) :: kx1, kx2, kx3, kx4
    real(dp), dimension(p%j * p%k) :: ky1, ky2, ky3, ky4
    call stage(x, y, kx1, ky1)
    call stage(x + 0.5_dp * dt * kx1, y + 0.5_dp * dt * ky1, kx2, ky2)
    call stage(x + 0.5_dp * dt * kx2, y + 0.5_dp * dt * ky2, kx3, ky3)
    call stage(x + dt * kx3, y + dt * ky3, kx4, ky4)
    x = x + dt / 6 * (kx1 + 2 * kx2 + 2 * kx3 + kx4)
    y = y + dt / 6 * (ky1 + 2 * ky2 + 2 * ky3 + ky4)
  contains
    pure subroutine stage(xs, ys, dx, dy)
      real(dp), intent(in) :: xs(p%k), ys(p%j * p%k)
      real(dp), intent(out) :: dx(p%k), dy(p%j * p%k)
      real(dp) :: u(p%k)
      call coupling_term(p, ys, u)
      call slow_tendency(p, xs, u, dx)
      call fast_tendency(p, xs, ys, dy)
    end subroutine stage
  end subroutine truth_step

  !> One RK4 step of the coarse model; the closure is evaluated at every stage.
  subroutine coarse_step(p, dt, x, closure, stat)
    type(l96_params_t), intent(in) :: p
    real(dp), intent(in) :: dt
    real(dp), intent(inout) :: x(p%k)
    procedure(closure_iface) :: closure
    integer, intent(out) :: stat
    real(dp), dimension(p%k) :: k1, k2, k3, k4, u, xs
    call closure(x, u, stat); if (stat /= 0) return
    call slow_tendency(p, x, u, k1)
    xs = x + 0.5_dp * dt * k1
    call closure(xs, u, stat); if (stat /= 0) return
    call slow_tendency(p, xs, u, k2)
    xs = x + 0.5_dp * dt * k2
    call closure(xs, u, stat); if (stat /= 0) return
    call slow_tendency(p, xs, u, k3)
    xs = x + dt * k3
    call closure(xs, u, stat); if (stat /= 0) return
    call slow_tendency(p, xs, u, k4)
    x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  end subroutine coarse_step
end module l96_dynamics
