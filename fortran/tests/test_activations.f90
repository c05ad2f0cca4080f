! Every activation against its closed form, and the parser's refusals.
program test_activations
  use colnn
  implicit none
  integer, parameter :: n = 9
  real(dp), parameter :: xs(n) = [-20.0_dp, -3.5_dp, -1.0_dp, -0.25_dp, 0.0_dp, 0.3_dp, 1.0_dp, 2.5_dp, 15.0_dp]
  integer :: failures = 0

  call check('linear', xs)
  call check('relu', max(xs, 0.0_dp))
  call check('relu negative_slope=0.1 max_value=2 threshold=0.5', relu_general(xs, 0.1_dp, 2.0_dp, 0.5_dp))
  call check('relu negative_slope=0 max_value=none threshold=-0.5', merge(xs, 0.0_dp, xs > -0.5_dp))
  call check('relu6', min(max(xs, 0.0_dp), 6.0_dp))
  call check('leaky_relu negative_slope=0.3', merge(xs, 0.3_dp * xs, xs >= 0))
  call check('leaky_relu', merge(xs, 0.2_dp * xs, xs >= 0))
  call check('elu alpha=1.5', merge(xs, 1.5_dp * (exp(xs) - 1), xs > 0))
  call check('selu', 1.0507009873554805_dp * merge(xs, 1.6732632423543772_dp * (exp(xs) - 1), xs > 0))
  call check('gelu approximate=false', 0.5_dp * xs * (1 + erf(xs / sqrt(2.0_dp))))
  call check('gelu approximate=true', 0.5_dp * xs * (1 + tanh(sqrt(2 / acos(-1.0_dp)) * (xs + 0.044715_dp * xs**3))))
  call check('swish', xs / (1 + exp(-xs)))
  call check('silu', xs / (1 + exp(-xs)))
  call check('sigmoid', 1 / (1 + exp(-xs)))
  call check('hard_sigmoid', min(max(xs / 6 + 0.5_dp, 0.0_dp), 1.0_dp))
  call check('hard_sigmoid slope=0.2 offset=0.5', min(max(0.2_dp * xs + 0.5_dp, 0.0_dp), 1.0_dp))
  call check('hard_silu', xs * min(max(xs / 6 + 0.5_dp, 0.0_dp), 1.0_dp))
  call check('tanh', tanh(xs))
  call check('softplus', log(1 + exp(xs)))
  call check('softsign', xs / (1 + abs(xs)))
  call check('exponential', exp(xs))
  call check('mish', xs * tanh(log(1 + exp(xs))))
  call check('softmax', exp(xs - maxval(xs)) / sum(exp(xs - maxval(xs))))
  call check('log_softmax', xs - maxval(xs) - log(sum(exp(xs - maxval(xs)))))

  call refuse('gaussian', COLNN_ERR_UNSUPPORTED)
  call refuse('relu alpha=3', COLNN_ERR_UNSUPPORTED)
  call refuse('elu alpha=abc', COLNN_ERR_FORMAT)
  call refuse('leaky_relu negative_slope', COLNN_ERR_FORMAT)
  call refuse('', COLNN_ERR_FORMAT)

  if (failures > 0) then
    print '(i0,a)', failures, ' activation checks failed'
    error stop 1
  end if
  print '(a)', 'test_activations: all passed'

contains

  pure function relu_general(x, slope, maxv, thr) result(y)
    real(dp), intent(in) :: x(:), slope, maxv, thr
    real(dp) :: y(size(x))
    integer :: i
    do i = 1, size(x)
      if (x(i) >= maxv) then
        y(i) = maxv
      else if (x(i) >= thr) then
        y(i) = x(i)
      else
        y(i) = slope * (x(i) - thr)
      end if
    end do
  end function relu_general

  subroutine check(spec, expected)
    character(len=*), intent(in) :: spec
    real(dp), intent(in) :: expected(:)
    type(activation_t) :: act
    integer :: stat
    character(len=:), allocatable :: msg
    real(wp) :: a(n, 1)
    real(dp) :: err, tol
    call parse_activation(spec, act, stat, msg)
    if (stat /= 0) then
      print '(a)', 'FAIL parse '//spec//': '//msg
      failures = failures + 1
      return
    end if
    a(:, 1) = real(xs, wp)
    call act%apply(n, 1, a)
    tol = 8 * epsilon(1.0_wp)
    err = maxval(abs(a(:, 1) - expected) / max(1.0_dp, abs(expected)))
    if (err > tol .or. any(a /= a)) then
      print '(a,es10.3)', 'FAIL '//spec//': max rel error ', err
      print '(9es12.4)', a(:, 1)
      print '(9es12.4)', expected
      failures = failures + 1
    end if
  end subroutine check

  subroutine refuse(spec, expected_stat)
    character(len=*), intent(in) :: spec
    integer, intent(in) :: expected_stat
    type(activation_t) :: act
    integer :: stat
    character(len=:), allocatable :: msg
    call parse_activation(spec, act, stat, msg)
    if (stat /= expected_stat .or. len(msg) == 0) then
      print '(a,i0)', "FAIL: '"//spec//"' should be refused, stat=", stat
      failures = failures + 1
    end if
  end subroutine refuse
end program test_activations
