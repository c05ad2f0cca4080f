! Two-scale Lorenz-96 dynamics: with h = 0 the slow system is the one-scale model (the coarse
! model with a zero closure, bitwise); RK4 is fourth order; the advection conserves energy.
module zero_closure
  use l96_dynamics, only: dp
  implicit none
contains
  subroutine no_closure(x, u, stat)
    real(dp), intent(in) :: x(:)
    real(dp), intent(out) :: u(:)
    integer, intent(out) :: stat
    u = 0
    stat = 0
  end subroutine no_closure
end module zero_closure

program test_l96_dynamics
  use l96_dynamics
  use zero_closure, only: no_closure
  implicit none
  type(l96_params_t) :: p
  real(dp), allocatable :: x(:), y(:), xc(:), x0(:), y0(:), u(:), dx(:), xr(:, :)
  real(dp) :: e(3), adv
  integer :: s, stat, i, r, nsteps
  integer :: failures = 0

  p = l96_params_t(k=8, j=32, f=20, h=0, b=10, c=10)
  allocate (x(p%k), y(p%j * p%k), u(p%k), dx(p%k))
  x = [(sin(0.7_dp * i) * 3 + 1, i = 1, p%k)]
  y = [(0.1_dp * cos(0.3_dp * i), i = 1, p%j * p%k)]
  xc = x
  do s = 1, 200
    call truth_step(p, 0.001_dp, x, y)
    call coarse_step(p, 0.001_dp, xc, no_closure, stat)
  end do
  call check(all(x == xc), 'h = 0: the slow truth equals the one-scale model bitwise')

  ! RK4 order on the full two-scale system: errors at t = 0.1 against a dt/16 reference
  p%h = 1
  x0 = [(sin(0.7_dp * i) * 3 + 1, i = 1, p%k)]
  y0 = [(0.5_dp * cos(0.3_dp * i), i = 1, p%j * p%k)]
  allocate (xr(p%k, 4))
  do r = 1, 4
    x = x0
    y = y0
    nsteps = 50 * 2**(r - 1)
    if (r == 4) nsteps = 50 * 16
    do s = 1, nsteps
      call truth_step(p, 0.1_dp / nsteps, x, y)
    end do
    xr(:, r) = x
  end do
  do r = 1, 3
    e(r) = maxval(abs(xr(:, r) - xr(:, 4)))
  end do
  print '(a,3es10.2,a,2f6.2)', 'RK4 errors dt, dt/2, dt/4:', e, '  ratios', e(1) / e(2), e(2) / e(3)
  call check(e(1) / e(2) > 12 .and. e(1) / e(2) < 20 .and. e(2) / e(3) > 12, &
             'RK4: halving dt divides the error by about 16')

  ! energy: the advection term -X_{k-1}(X_{k-2} - X_{k+1}) does no work (sum X_k adv_k = 0)
  p%f = 0
  u = x0     ! cancels the damping -X_k: dx = adv
  call slow_tendency(p, x0, u, dx)
  adv = sum(x0 * dx)
  call check(abs(adv) < 1e-12_dp * sum(x0**2), 'advection conserves energy')

  if (failures > 0) error stop 1
  print '(a)', 'test_l96_dynamics: all passed'

contains

  subroutine check(ok, what)
    logical, intent(in) :: ok
    character(len=*), intent(in) :: what
    if (.not. ok) then
      print '(a)', 'FAIL: '//what
      failures = failures + 1
    end if
  end subroutine check
end program test_l96_dynamics
